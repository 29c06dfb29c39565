"""The WebSocket protocol: parsing client frames and building server messages, and
the typed update (``Update``) the hub hands every connection.

Client frames are JSON text: ``{"op": "subscribe", "task_id": ..., "token": ...?}``,
``{"op": "unsubscribe", "task_id": ...}``, ``{"op": "ping"}``; a subscribe or unsubscribe
may name a ``group_id`` or a ``feed`` (an owner) instead of a ``task_id``. Every message the server
sends is built here, so docs/protocol.md has one place to check against.
"""

from __future__ import annotations

import enum
import zlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from taskcast.bars import task_progress
from taskcast.groups import GroupStatus
from taskcast.ids import OWNER_PATTERN, OWNER_RULE, UUID_PATTERN
from taskcast.status import (
    Status,
    decode_status,
    encode,
    encode_shaped,
    encode_status,
    mark_unsendable,
)
from taskcast.tokens import FEED_PREFIX

# Close codes (4000-4999 are the application's own).
CLOSE_NORMAL = 1000  # the task ended (/ws/tasks/{id}) or the server shuts down
CLOSE_TOO_BIG = 1009  # a client frame over the size limit
CLOSE_TRY_AGAIN_LATER = 1013  # the client's address has TASKCAST_MAX_CONNECTIONS_PER_CLIENT open
CLOSE_UNAUTHORIZED = 4401  # /ws/tasks/{id}, /ws/groups/{id}: no valid watch token (or API key)
CLOSE_UNKNOWN_TASK = 4404  # /ws/tasks/{id}, /ws/groups/{id}: no such task or group
CLOSE_SLOW_CLIENT = 4408  # the client stopped reading for TASKCAST_SLOW_CLIENT_TIMEOUT
CLOSE_INVALID_TASK_ID = 4422  # /ws/tasks/{id}, /ws/groups/{id}: the id is not a UUID
CLOSE_FLOOD = 4429  # the client sent far more requests than it read replies for


class ProtocolError(Exception):
    """A client frame that cannot be acted on; answered with an error message."""

    def __init__(
        self,
        code: str,
        detail: str,
        task_id: str | None = None,
        group_id: str | None = None,
        feed: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.task_id = task_id
        self.group_id = group_id
        self.feed = feed


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


TaskId = Annotated[str, Field(pattern=UUID_PATTERN)]
Owner = Annotated[str, Field(pattern=OWNER_PATTERN)]
# Feeds are watched under this prefix of their owner, apart from any task or group id
# (the same a feed token binds).
_FEED = FEED_PREFIX


def feed_key(owner: str) -> str:
    """What a connection watches for ``owner``'s feed (and its mailbox keys it by)."""
    return _FEED + owner


def feed_owner(watched_id: str) -> str | None:
    """The owner of a feed's key; None for a task's or group's id."""
    return watched_id[len(_FEED) :] if watched_id.startswith(_FEED) else None


class _Watching(_Op):
    """A frame about one task, one group or one owner's feed: exactly one of the three
    (checked after parsing, to name what is missing)."""

    task_id: TaskId | None = None
    group_id: TaskId | None = None
    feed: Owner | None = None

    @property
    def watched_id(self) -> str:
        if self.feed is not None:
            return feed_key(self.feed)
        watched = self.group_id or self.task_id
        assert watched is not None
        return watched

    @property
    def ids(self) -> dict[str, str | None]:
        """The id as a reply names it: ``task_id``, ``group_id`` or ``feed``."""
        if self.feed is not None:
            return {"feed": self.feed}
        if self.group_id is not None:
            return {"group_id": self.group_id}
        return {"task_id": self.task_id}


class Subscribe(_Watching):
    op: Literal["subscribe"]
    # The watch token of the task or group (or the feed token of the owner), needed when
    # the service signs them (TASKCAST_SECRET).
    token: str | None = None
    # A feed resumed: the ``at`` of the last ``feed`` message the client had (Redis's
    # clock, ms); the finals of the owner's tasks that ended since are sent again.
    since: Annotated[int, Field(ge=0)] | None = None


class Unsubscribe(_Watching):
    op: Literal["unsubscribe"]


class Ping(_Op):
    op: Literal["ping"]


Command = Subscribe | Unsubscribe | Ping
_COMMAND: TypeAdapter[Command] = TypeAdapter(Annotated[Command, Field(discriminator="op")])
OPS = ("subscribe", "unsubscribe", "ping")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def parse_command(text: str) -> Command:
    """Parse one client frame, or raise ProtocolError naming what is wrong with it."""
    try:
        command = _COMMAND.validate_json(text)
    except ValidationError as exc:
        raise _explain(exc) from None
    if isinstance(command, Subscribe | Unsubscribe):
        task_id, group_id, feed = command.task_id, command.group_id, command.feed
        named = sum(value is not None for value in (task_id, group_id, feed))
        if named == 0:
            raise ProtocolError(
                "invalid_task_id",
                "task_id is required (or group_id, to follow a group, or feed, an owner's tasks)",
            )
        if named > 1:
            raise ProtocolError("invalid_message", "give one of task_id, group_id and feed")
        if isinstance(command, Subscribe) and command.since is not None and feed is None:
            raise ProtocolError("invalid_message", "since resumes a feed: give it with feed")
        if feed is not None:
            return command
        # Celery's ids are lower case; the Redis key must match exactly.
        if task_id is not None:
            return command.model_copy(update={"task_id": task_id.lower()})
        assert group_id is not None
        return command.model_copy(update={"group_id": group_id.lower()})
    return command


def _explain(exc: ValidationError) -> ProtocolError:
    problem = exc.errors(include_url=False)[0]
    kind, loc, given = problem["type"], problem["loc"], problem.get("input")
    if kind == "json_invalid":
        if "recursion limit" in str(problem.get("ctx", {}).get("error", "")):
            return ProtocolError("invalid_message", "frame is nested too deeply to read")
        return ProtocolError("invalid_message", "frame is not valid JSON")
    if kind == "model_attributes_type" or (kind.endswith("_type") and not loc):
        return ProtocolError("invalid_message", "frame must be a JSON object")
    if kind == "union_tag_not_found":
        return ProtocolError("invalid_message", 'frame has no "op" field')
    if kind == "union_tag_invalid":
        op = given.get("op") if isinstance(given, dict) else None
        return ProtocolError(
            "unknown_op", f"unknown op {_shown(op)}; expected one of {', '.join(OPS)}"
        )
    field = str(loc[-1]) if loc else "frame"
    if kind == "extra_forbidden":
        # Before the task_id check: a ping's task_id is unexpected, however well-formed.
        return ProtocolError("invalid_message", f"unexpected field {field!r}")
    if field == "feed":
        return ProtocolError(
            "invalid_feed",
            f"feed must be an owner: {OWNER_RULE}, got {_shown(given)}",
        )
    if field in ("task_id", "group_id"):
        shown = given if isinstance(given, str) and len(given) <= 64 else None
        detail = f"{field} must be a UUID string, got {_shown(given)}"
        if field == "group_id":
            return ProtocolError("invalid_group_id", detail, group_id=shown)
        return ProtocolError("invalid_task_id", detail, shown)
    return ProtocolError("invalid_message", f"{field}: {problem['msg']}")


class Kind(enum.Enum):
    """What an update means for the subscription it belongs to."""

    STATUS = ("status", False)  # a non-final status: more may follow
    FINAL = ("final", True)  # the final status: the subscription ends
    UNKNOWN = ("unknown", True)  # no such task or group, or refused: the subscription ends
    REPLY = ("reply", False)  # an answer to the client (pong, error, unsubscribed)

    def __init__(self, label: str, terminal: bool) -> None:
        # A plain attribute, not a property: it is read once per client per change.
        self.terminal = terminal


class Update:
    """One change as the hub hands it to every connection: what it is about, its kind,
    its status, and its text, encoded once for all of them. A transport that writes it
    otherwise (celery-progress's object) makes that form once too, on the first
    connection that asks, and keeps it here for the rest: no connection parses a frame
    back.

    A task's update keeps the record it was made from (the hub's own bytes, no copy),
    not its decoded status: the hub holds one update per watched task, and a status
    dict costs a kilobyte that few transports ever read again (``status`` decodes it).
    """

    __slots__ = (
        "_bar",
        "_group",
        "_raw",
        "_unsendable",
        "_version",
        "kind",
        "stalled",
        "text",
        "type",
        "watched_id",
    )

    def __init__(
        self,
        watched_id: str | None,
        kind: Kind,
        type: str,
        text: str,
        *,
        raw: bytes | None = None,
        stalled: bool = False,
        unsendable: bool = False,
        group: GroupStatus | None = None,
    ) -> None:
        # The task or group id (None for a reply, which belongs to no subscription).
        self.watched_id = watched_id
        self.kind = kind
        # The message's ``type``: status, group, error, pong, unsubscribed.
        self.type = type
        self.text = text
        # A task's record, and whether its worker had gone silent; a group's status.
        self._raw = raw
        self.stalled = stalled
        # Whether the task's result could not be written (its text says so instead).
        self._unsendable = unsendable
        self._group = group
        self._version: str | None = None
        self._bar: str | None = None

    def __repr__(self) -> str:
        return f"<Update {self.kind.name} {self.type} {self.watched_id}>"

    @property
    def status(self) -> Status | GroupStatus | None:
        """The status carried: a group's as sent; a task's decoded again from its record
        (as sent but for the hub's own rate and ETA); None for anything else."""
        if self._raw is not None and self.watched_id is not None:
            status = decode_status(self.watched_id, self._raw)
            status["stalled"] = self.stalled
            if self._unsendable:
                mark_unsendable(status)
            return status
        return self._group

    @property
    def version(self) -> str:
        """A short digest of the state, the same on every replica (so an event stream
        resumes on any): 8 hex digits, after an ``f`` when the update is terminal, so
        that no final can be taken for a state the client already had. A task's is its
        record's (and stalled flag's), not its text's, whose rate and ETA move with the
        clock; a group's leaves its ETA out for the same reason."""
        if self._version is None:
            if self._raw is not None:
                digest = zlib.crc32(self._raw)
                if self.stalled:
                    digest = zlib.crc32(b"stalled", digest)
            elif self._group is not None:
                group = self._group
                progress = {**group["progress"], "eta_s": None}
                digest = zlib.crc32(encode({**group, "progress": progress}))
            else:
                digest = zlib.crc32(self.text.encode())
            self._version = f"{'f' if self.kind.terminal else ''}{digest:08x}"
        return self._version

    @property
    def bar(self) -> str:
        """celery-progress's message for this update: its task object for a status,
        taskcast's own message for anything else (an unknown task, before the close)."""
        if self._bar is None:
            status = self.status if self.type == "status" else None
            if status is None:
                self._bar = self.text
            else:
                self._bar = encode_shaped(status, task_progress).decode()  # type: ignore[arg-type]
        return self._bar


def status_update(status: Status, raw: bytes) -> Update:
    """A task's status as an update: the status message (the status object with
    ``"type": "status"``), encoded once; a result that cannot be written as JSON is
    marked in the status itself (``encode_status``), for every transport alike."""
    result = status["result"]
    text = encode_status(status, type="status").decode()
    kind = Kind.FINAL if status["final"] else Kind.STATUS
    # (encode_status left the result out: it could not be written.)
    unsendable = result is not None and status["result"] is None
    return Update(
        status["task_id"],
        kind,
        "status",
        text,
        raw=raw,
        stalled=status["stalled"],
        unsendable=unsendable,
    )


def feed_snapshot(owner: str, at_ms: int, statuses: list[str]) -> Update:
    """The answer to a feed's subscribe: the status messages (as sent, ``"type":
    "status"``) of the owner's unfinished tasks (and of those that ended since, when it
    resumes), with the time it was made on Redis's clock (``at``, to resume from)."""
    head = encode({"type": "feed", "feed": owner, "at": at_ms}).decode()
    text = f'{head[:-1]},"tasks":[{",".join(statuses)}]}}'
    return Update(feed_key(owner), Kind.STATUS, "feed", text)


def group_update(group: GroupStatus) -> Update:
    """A group's status as an update: the group status object with ``"type": "group"``."""
    text = encode({"type": "group", **group}).decode()
    kind = Kind.FINAL if group["final"] else Kind.STATUS
    return Update(group["group_id"], kind, "group", text, group=group)


def error_message(
    code: str,
    detail: str,
    task_id: str | None = None,
    group_id: str | None = None,
    feed: str | None = None,
) -> str:
    """An error message, as text (for a socket refused before it is served)."""
    message: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if task_id is not None:
        message["task_id"] = task_id
    if group_id is not None:
        message["group_id"] = group_id
    if feed is not None:
        message["feed"] = feed
    return encode(message).decode()


def error_reply(
    code: str,
    detail: str,
    task_id: str | None = None,
    group_id: str | None = None,
    feed: str | None = None,
) -> Update:
    """An error answering a client frame; the connection stays open."""
    text = error_message(code, detail, task_id, group_id, feed)
    return Update(None, Kind.REPLY, "error", text)


def unknown_task(task_id: str) -> Update:
    """No record of this task: its subscription ends with this error."""
    text = error_message("unknown_task", f"no task with id {task_id}", task_id)
    return Update(task_id, Kind.UNKNOWN, "error", text)


def unknown_group(group_id: str) -> Update:
    """No such group: its subscription ends with this error."""
    text = error_message("unknown_group", f"no group with id {group_id}", group_id=group_id)
    return Update(group_id, Kind.UNKNOWN, "error", text)


def unauthorized(watched_id: str, detail: str, **ids: str) -> Update:
    """A watch refused (no valid token): that id's part of a stream ends with this error."""
    text = error_message("unauthorized", detail, **ids)
    return Update(watched_id, Kind.UNKNOWN, "error", text)


def unsubscribed(ids: dict[str, str | None]) -> Update:
    """The answer to an unsubscribe, naming what it named (``task_id`` or ``group_id``)."""
    text = encode({"type": "unsubscribed", **ids}).decode()
    return Update(None, Kind.REPLY, "unsubscribed", text)


PONG = Update(None, Kind.REPLY, "pong", encode({"type": "pong"}).decode())
