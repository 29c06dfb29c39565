"""The WebSocket protocol: parsing client frames and building server messages.

Client frames are JSON text: ``{"op": "subscribe", "task_id": ..., "token": ...?}``,
``{"op": "unsubscribe", "task_id": ...}``, ``{"op": "ping"}``; a subscribe or unsubscribe
may name a ``group_id`` instead of a ``task_id``. Every message the server
sends is built here, so docs/protocol.md has one place to check against.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

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


# Why a watch was refused: the same words whether or not the task exists.
UNAUTHORIZED_DETAIL = (
    "the watch token of the task (or group), or an API key, is required; tokens expire"
)


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


def status_message(status: Status) -> str:
    """The status message: the status object with ``"type": "status"``, encoded once."""
    return encode_status(status, type="status").decode()


def group_message(group: GroupStatus) -> str:
    """The group message: the group status object with ``"type": "group"``."""
    return encode({"type": "group", **group}).decode()


def error_message(
    code: str, detail: str, task_id: str | None = None, group_id: str | None = None
) -> str:
    message: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if task_id is not None:
        message["task_id"] = task_id
    if group_id is not None:
        message["group_id"] = group_id
    return encode(message).decode()


def unknown_task_message(task_id: str) -> str:
    return error_message("unknown_task", f"no task with id {task_id}", task_id)


def unknown_group_message(group_id: str) -> str:
    return error_message("unknown_group", f"no group with id {group_id}", group_id=group_id)


def unsubscribed_message(ids: dict[str, str | None]) -> str:
    """The answer to an unsubscribe, naming what it named (``task_id`` or ``group_id``)."""
    return encode({"type": "unsubscribed", **ids}).decode()


PONG = encode({"type": "pong"}).decode()
