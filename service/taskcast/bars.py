"""celery-progress's objects, made from taskcast's status object, so that its own
JavaScript (``CeleryProgressBar``, ``CeleryWebSocketProgressBar``) fills its bars from
taskcast's endpoints unchanged.

They follow celery-progress's rules per state (its ``Progress`` and ``GroupProgress``),
so a task that reported progress in any convention taskcast reads fills its bar. One
difference, deliberate: a state of the task's own naming is running, not "Unknown
state" (a failure there).
"""

from __future__ import annotations

from typing import Any

# pydantic reads TypedDicts (for their JSON Schema) only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from taskcast.status import Number, Status
from taskcast_celery import states
from taskcast_celery.states import WAITING_STATES


class BarProgress(TypedDict, total=False):
    """celery-progress's ``progress`` object."""

    pending: bool
    current: Number
    total: Number
    percent: Number
    description: str


class TaskProgress(TypedDict, total=False):
    """celery-progress's object for one task."""

    state: str
    complete: bool
    success: bool | None
    progress: BarProgress
    result: Any


def task_progress(status: Status) -> TaskProgress:
    """celery-progress's object for a task whose taskcast status is ``status``."""
    state = status["state"]
    error = status["error"]
    reason = "" if error is None else error["message"]
    if state == states.SUCCESS:
        return _ended(state, True, status["result"])
    if state == states.FAILURE:
        return _ended(state, False, reason)
    if state == states.REVOKED:
        return _ended(state, False, f"Task {reason or 'revoked'}")
    if state == states.RETRY:
        # celery-progress reads the delay from the traceback, which the status does not
        # carry; "Unknown" is its own answer when it cannot tell.
        message = f"{reason[:50]}..."
        return _ended(state, False, {"next_retry_seconds": "Unknown", "message": message})
    if state == states.IGNORED:
        return _ended(state, None, reason)
    shown = states.PENDING if state in WAITING_STATES else state
    return {"state": shown, "complete": False, "success": None, "progress": _bar(status)}


def _ended(state: str, success: bool | None, result: Any) -> TaskProgress:
    # celery-progress's bar of an ended task, whatever it reported: full.
    bar: BarProgress = {"pending": False, "current": 100, "total": 100, "percent": 100}
    return {"state": state, "complete": True, "success": success, "progress": bar, "result": result}


# A member with no record (expired meanwhile): one not started, as celery-progress sees it.
NOT_STARTED: TaskProgress = {
    "state": states.PENDING,
    "complete": False,
    "success": None,
    "progress": {"pending": True, "current": 0, "total": 100, "percent": 0, "description": ""},
}


def _bar(status: Status) -> BarProgress:
    """A running task's bar: its own numbers whatever convention it reported them in, with
    ``percent`` and ``description`` always there (celery-progress's JavaScript reads both)."""
    progress = status["progress"]
    waiting = status["state"] in WAITING_STATES
    if progress is None or progress["percent"] is None:
        bar: BarProgress = {"pending": waiting, "current": 0, "total": 100, "percent": 0}
    else:
        percent = progress["percent"]
        current, total = progress["current"], progress["total"]
        if current is None or total is None:
            # A lone percent: the bar counts in percent.
            current, total = percent, 100
        bar = {"pending": waiting, "current": current, "total": total, "percent": percent}
    bar["description"] = (progress["message"] if progress is not None else None) or ""
    return bar


class GroupBarProgress(TypedDict):
    total: Number
    current: Number
    percent: float


class GroupProgress(TypedDict):
    """celery-progress's object for a group."""

    complete: bool
    success: bool
    progress: GroupBarProgress


def group_progress(members: list[TaskProgress]) -> GroupProgress:
    """celery-progress's object for a group whose members' objects are ``members``: the
    sums of their bars' current and total (its ``GroupProgress``)."""
    total = sum(member["progress"]["total"] for member in members)
    current = sum(member["progress"]["current"] for member in members)
    return {
        "complete": all(member["complete"] for member in members),
        "success": all(member["success"] for member in members),
        "progress": {
            "total": total,
            "current": current,
            "percent": round(100 * current / total, 2) if total else 0.0,
        },
    }
