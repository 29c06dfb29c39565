"""A group's status: its members' statuses added up, one member's change at a time.

A group is a batch of tasks started together (a Celery group). Its status object says
how many members are done, how many are in each state, the summed progress, and which
members failed. The hub keeps one ``GroupTally`` per watched group and feeds it each
member's new status as it reads it; the tally takes the member's old contribution out
and puts the new one in, so a change costs the same in a group of 1,000 as in one of
two.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from pydantic import Field

# pydantic reads TypedDicts (for their JSON Schema) only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from taskcast.status import Number, Status, TaskError, UuidText, kept_progress
from taskcast_celery import states
from taskcast_celery.states import WAITING_STATES

# While a group runs, its status lists at most this many failures (and stalled members):
# a frame goes out on every member's change, and a group of 1,000 whose members all fail
# would otherwise send the whole growing list 1,000 times. The final status lists all;
# ``states`` counts them all the time.
RUNNING_LIST_LIMIT = 25

# A member with no record at all (it expired, or was never written): it is over, and
# counts as failed, since nothing says it succeeded.
UNKNOWN = "UNKNOWN"
_UNKNOWN_ERROR: TaskError = {"type": "UnknownTask", "message": "the task has no record (expired?)"}


class GroupProgress(TypedDict):
    """The group's work done: the mean of its members' completion (a finished member
    counts 100), and the sums of current and total of the members that report them."""

    current: Number | None
    total: Number | None
    percent: Annotated[float, Field(ge=0, le=100)]
    eta_s: Annotated[float | None, Field(ge=0)]


class GroupFailure(TypedDict):
    """A member that failed or was cancelled."""

    task_id: UuidText
    state: str
    error: TaskError


class GroupStatus(TypedDict):
    """A group's status: ``GET /groups/{id}``, and every WebSocket group message."""

    group_id: UuidText
    state: Annotated[
        str,
        Field(
            description="SENT (no member started), PROGRESS, then SUCCESS (every member "
            "succeeded), FAILURE (one or more failed) or REVOKED (none failed, one or more "
            "cancelled)"
        ),
    ]
    final: Annotated[bool, Field(description="every member has ended")]
    stalled: Annotated[bool, Field(description="an unfinished member is stalled")]
    size: Annotated[int, Field(ge=1)]
    done: Annotated[int, Field(ge=0, description="members ended")]
    states: Annotated[dict[str, int], Field(description="how many members are in each state")]
    progress: GroupProgress
    failures: Annotated[
        list[GroupFailure],
        Field(
            description=f"failed or cancelled members (the first {RUNNING_LIST_LIMIT} while "
            "it runs)"
        ),
    ]
    stalled_tasks: Annotated[
        list[UuidText],
        Field(description=f"members whose worker went silent (the first {RUNNING_LIST_LIMIT})"),
    ]


@dataclass(frozen=True, slots=True)
class _Member:
    """What one member adds to the group's sums."""

    state: str
    final: bool
    stalled: bool
    # Share of the member's work done, 0 to 1: a finished member counts 1.
    fraction: float
    current: float | None
    total: float | None
    error: TaskError | None


class GroupTally:
    """The running sums of one group, kept up to date member by member."""

    __slots__ = (
        "_current",
        "_failures",
        "_fraction",
        "_members",
        "_position",
        "_reporting",
        "_stalled",
        "_total",
        "done",
        "group_id",
        "size",
        "states",
    )

    def __init__(self, group_id: str, members: Sequence[str]) -> None:
        self.group_id = group_id
        self.size = len(members)
        self._members: dict[str, _Member] = {}
        # Where each member stands in the group: failures and stalled members are listed
        # in this order, so that the list reads the same over REST and live, whatever
        # order their changes were seen in.
        self._position = {task_id: index for index, task_id in enumerate(members)}
        self.states: Counter[str] = Counter()
        self.done = 0
        self._fraction = 0.0
        self._current = 0.0
        self._total = 0.0
        # Members counted in the sums of current and total.
        self._reporting = 0
        self._failures: dict[str, GroupFailure] = {}
        self._stalled: dict[str, None] = {}

    @property
    def complete(self) -> bool:
        """Whether every member's status has been seen at least once."""
        return len(self._members) == self.size

    @property
    def final(self) -> bool:
        return self.done == self.size

    def update(self, task_id: str, status: Status | None, raw: bytes | None = None) -> None:
        """Take in a member's newest status (None: the member has no record), decoded
        from its record ``raw``."""
        old = self._members.get(task_id)
        new = _member(status, raw)
        if old is not None:
            self._count(task_id, old, -1)
        self._members[task_id] = new
        self._count(task_id, new, +1)

    def _count(self, task_id: str, member: _Member, sign: int) -> None:
        self.states[member.state] += sign
        if not self.states[member.state]:
            del self.states[member.state]
        self.done += sign * member.final
        self._fraction += sign * member.fraction
        if member.current is not None and member.total is not None:
            self._reporting += sign
            self._current += sign * member.current
            self._total += sign * member.total
        if member.error is not None:
            if sign > 0:
                entry: GroupFailure = {
                    "task_id": task_id,
                    "state": member.state,
                    "error": member.error,
                }
                self._failures[task_id] = entry
            else:
                self._failures.pop(task_id, None)
        if member.stalled:
            if sign > 0:
                self._stalled[task_id] = None
            else:
                self._stalled.pop(task_id, None)

    def _in_order(self, ids: Iterable[str]) -> list[str]:
        """``ids`` in the order of the group's members."""
        return sorted(ids, key=self._position.__getitem__)

    @property
    def stalled(self) -> bool:
        """Whether an unfinished member's worker has gone silent."""
        return bool(self._stalled)

    @property
    def fraction_done(self) -> float:
        """Members' work done, summed: between 0 and ``size``."""
        return self._fraction

    def status(self, eta_s: float | None = None) -> GroupStatus:
        """The group status object (``eta_s`` comes from whoever measures the pace)."""
        final = self.final
        state: str
        if final:
            if any(entry["state"] != states.REVOKED for entry in self._failures.values()):
                state = states.FAILURE
            elif self._failures:
                state = states.REVOKED
            else:
                state = states.SUCCESS
        elif all(state in WAITING_STATES for state in self.states):
            state = states.SENT
        else:
            state = "PROGRESS"
        percent = 100.0 if final else round(self._fraction * 100.0 / max(self.size, 1), 2)
        reporting = self._reporting > 0
        return {
            "group_id": self.group_id,
            "state": state,
            "final": final,
            "stalled": self.stalled and not final,
            "size": self.size,
            "done": self.done,
            "states": dict(sorted(self.states.items())),
            "progress": {
                "current": _whole(self._current) if reporting else None,
                "total": _whole(self._total) if reporting else None,
                "percent": percent,
                "eta_s": 0.0 if final else eta_s,
            },
            "failures": [
                self._failures[task_id]
                for task_id in _first(
                    self._in_order(self._failures), None if final else RUNNING_LIST_LIMIT
                )
            ],
            "stalled_tasks": []
            if final
            else list(_first(self._in_order(self._stalled), RUNNING_LIST_LIMIT)),
        }


def _member(status: Status | None, raw: bytes | None) -> _Member:
    if status is None:
        return _Member(UNKNOWN, True, False, 1.0, None, None, _UNKNOWN_ERROR)
    final = bool(status["final"])
    progress = status["progress"]
    current = total = None
    fraction = 1.0 if final else 0.0
    if progress is not None:
        current, total = progress["current"], progress["total"]
        if not final and progress["percent"] is not None:
            fraction = progress["percent"] / 100.0
    elif final and raw is not None:
        # A failed or cancelled member's status shows no progress, but its record keeps
        # the last it reported (taskcast_celery.backend): that stays in the sums, so the group's
        # total does not shrink when a member fails, and REST, which sees no history,
        # adds up the same.
        kept = kept_progress(raw)
        if kept is not None:
            current, total = kept["current"], kept["total"]
    error = status["error"] if final and status["state"] != states.SUCCESS else None
    if final and error is None and status["state"] != states.SUCCESS:
        error = {"type": "Error", "message": ""}
    stalled = bool(status["stalled"])
    return _Member(status["state"], final, stalled, fraction, current, total, error)


def _first(items: Iterable[Any], limit: int | None) -> Iterable[Any]:
    return items if limit is None else itertools.islice(items, limit)


def _whole(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 6)


def member_ids(raw: bytes) -> list[str] | None:
    """The member task ids in Celery's saved group record (``GroupResult.save``), or None
    when the record is not one.

    Celery stores ``{"result": [[group_id, parent], [[[task_id, parent], None], ...]]}``
    (``GroupResult.as_tuple``).
    """
    try:
        meta = orjson.loads(raw)
        _, members = meta["result"]
        return [str(member[0][0]) for member in _iterable(members)]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return None


def _iterable(value: Any) -> Iterable[Any]:
    if not isinstance(value, list):
        raise TypeError("members must be a list")
    return value
