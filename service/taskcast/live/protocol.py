"""The WebSocket protocol: parsing client frames and building server messages, and
the typed update (``Update``) the hub hands every connection.

Client frames are JSON text: ``{"op": "subscribe", "task_id": ..., "token": ...?}``,
``{"op": "unsubscribe", "task_id": ...}``, ``{"op": "ping"}``; a subscribe or unsubscribe
may name a ``group_id`` instead of a ``task_id``. Every message the server
sends is built here, so docs/protocol.md has one place to check against.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import MutableMapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from taskcast.bars import task_progress
from taskcast.groups import GroupStatus
from taskcast.ids import UUID_PATTERN
from taskcast.status import Status, encode, encode_status

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
        self, code: str, detail: str, task_id: str | None = None, group_id: str | None = None
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.task_id = task_id
        self.group_id = group_id


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


TaskId = Annotated[str, Field(pattern=UUID_PATTERN)]


class _Watching(_Op):
    """A frame about one task or one group: exactly one of the two ids (checked after
    parsing, to name what is missing)."""

    task_id: TaskId | None = None
    group_id: TaskId | None = None

    @property
    def watched_id(self) -> str:
        watched = self.group_id or self.task_id
        assert watched is not None
        return watched

    @property
    def ids(self) -> dict[str, str | None]:
        """The id as a reply names it: ``task_id`` or ``group_id``."""
        if self.group_id is not None:
            return {"group_id": self.group_id}
        return {"task_id": self.task_id}


class Subscribe(_Watching):
    op: Literal["subscribe"]
    # The watch token of the task or group, needed when the service signs them
    # (TASKCAST_SECRET).
    token: str | None = None


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
        task_id, group_id = command.task_id, command.group_id
        if task_id is None and group_id is None:
            raise ProtocolError(
                "invalid_task_id", "task_id is required (or group_id, to follow a group)"
            )
        if task_id is not None and group_id is not None:
            raise ProtocolError("invalid_message", "give task_id or group_id, not both")
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
    the status it carries, and its text, encoded once for all of them. A transport that
    writes it differently (celery-progress's objects, an event stream's framing) makes
    its form once too, on the first connection that asks, and keeps it here for the
    rest: no connection parses a frame back."""

    __slots__ = (
        "_bar",
        "_identity",
        "_version",
        "event",
        "kind",
        "status",
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
        status: Status | GroupStatus | None = None,
        identity: bytes | None = None,
    ) -> None:
        # The task or group id (None for a reply, which belongs to no subscription).
        self.watched_id = watched_id
        self.kind = kind
        # The message's ``type``: status, group, error, pong, unsubscribed.
        self.type = type
        self.text = text
        self.status = status
        # What says which state this is, for the event stream's resume: a record's raw
        # bytes (and its stalled flag), not the text, whose rate and ETA move with the clock.
        self._identity = identity
        self._version: str | None = None
        self._bar: str | None = None
        # The event stream's ASGI message for this update, on a stream of one id.
        self.event: MutableMapping[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Update {self.kind.name} {self.watched_id}>"

    @property
    def version(self) -> str:
        """A short digest of the state, the same on every replica (so an event stream
        resumes on any): 8 hex digits, after an ``f`` when the update is terminal, so
        that no final can be taken for a state the client already had."""
        if self._version is None:
            digest = zlib.crc32(self._identity if self._identity is not None else self._identify())
            self._version = f"{'f' if self.kind.terminal else ''}{digest:08x}"
        return self._version

    def _identify(self) -> bytes:
        status = self.status
        if self.type != "group" or status is None:
            return self.text.encode()
        # A group's estimate moves with the clock: a state whose only change is its ETA
        # has been seen already.
        return encode({**status, "progress": {**status["progress"], "eta_s": None}})  # type: ignore[dict-item]

    @property
    def bar(self) -> str:
        """celery-progress's message for this update: its task object for a status,
        taskcast's own message for anything else (an unknown task, before the close)."""
        if self._bar is None:
            if self.type == "status":
                # (The status was marked sendable when its text was encoded.)
                self._bar = encode(task_progress(self.status)).decode()  # type: ignore[arg-type]
            else:
                self._bar = self.text
        return self._bar


def status_update(status: Status, raw: bytes) -> Update:
    """A task's status as an update: the status message (the status object with
    ``"type": "status"``), encoded once; a result that cannot be written as JSON is
    marked in the status itself (``encode_status``), for every transport alike."""
    text = encode_status(status, type="status").decode()
    kind = Kind.FINAL if status["final"] else Kind.STATUS
    identity = raw + (b"s" if status["stalled"] else b"")
    return Update(status["task_id"], kind, "status", text, status, identity)


def group_update(group: GroupStatus) -> Update:
    """A group's status as an update: the group status object with ``"type": "group"``."""
    text = encode({"type": "group", **group}).decode()
    kind = Kind.FINAL if group["final"] else Kind.STATUS
    return Update(group["group_id"], kind, "group", text, group)


def error_message(
    code: str, detail: str, task_id: str | None = None, group_id: str | None = None
) -> str:
    """An error message, as text (for a socket refused before it is served)."""
    message: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if task_id is not None:
        message["task_id"] = task_id
    if group_id is not None:
        message["group_id"] = group_id
    return encode(message).decode()


def error_reply(
    code: str, detail: str, task_id: str | None = None, group_id: str | None = None
) -> Update:
    """An error answering a client frame; the connection stays open."""
    return Update(None, Kind.REPLY, "error", error_message(code, detail, task_id, group_id))


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
