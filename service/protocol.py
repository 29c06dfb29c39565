"""The WebSocket protocol: parsing client frames and building server messages.

Client frames are JSON text: ``{"op": "subscribe", "task_id": ..., "token": ...?}``,
``{"op": "unsubscribe", "task_id": ...}``, ``{"op": "ping"}``. Every message the server
sends is built here, so docs/protocol.md has one place to check against.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.status import Status, encode
from service.validation import UUID_PATTERN

# Close codes (4000-4999 are the application's own).
CLOSE_NORMAL = 1000  # the task ended (/ws/tasks/{id}) or the server shuts down
CLOSE_TOO_BIG = 1009  # a client frame over the size limit
CLOSE_TRY_AGAIN_LATER = 1013  # the client's address has TASKCAST_MAX_CONNECTIONS_PER_CLIENT open
CLOSE_UNAUTHORIZED = 4401  # /ws/tasks/{id}: no valid watch token (or API key)
CLOSE_UNKNOWN_TASK = 4404  # /ws/tasks/{id}: no such task
CLOSE_SLOW_CLIENT = 4408  # the client stopped reading for TASKCAST_SLOW_CLIENT_TIMEOUT
CLOSE_INVALID_TASK_ID = 4422  # /ws/tasks/{id}: the id is not a UUID
CLOSE_FLOOD = 4429  # the client sent far more requests than it read replies for


# Why a watch was refused: the same words whether or not the task exists.
UNAUTHORIZED_DETAIL = "the task's watch token, or an API key, is required; tokens expire"


class ProtocolError(Exception):
    """A client frame that cannot be acted on; answered with an error message."""

    def __init__(self, code: str, detail: str, task_id: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.task_id = task_id


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


TaskId = Annotated[str, Field(pattern=UUID_PATTERN)]


class Subscribe(_Op):
    op: Literal["subscribe"]
    task_id: TaskId
    # The task's watch token, needed when the service signs them (TASKCAST_SECRET).
    token: str | None = None


class Unsubscribe(_Op):
    op: Literal["unsubscribe"]
    task_id: TaskId


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
        # Celery's ids are lower case; the Redis key must match exactly.
        return command.model_copy(update={"task_id": command.task_id.lower()})
    return command


def _explain(exc: ValidationError) -> ProtocolError:
    problem = exc.errors(include_url=False)[0]
    kind, loc, given = problem["type"], problem["loc"], problem.get("input")
    if kind == "json_invalid":
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
    if field == "task_id":
        if kind == "missing":
            return ProtocolError("invalid_task_id", "task_id is required")
        shown = given if isinstance(given, str) and len(given) <= 64 else None
        return ProtocolError(
            "invalid_task_id", f"task_id must be a UUID string, got {_shown(given)}", shown
        )
    return ProtocolError("invalid_message", f"{field}: {problem['msg']}")


def status_message(status: Status) -> str:
    """The status message: the status object with ``"type": "status"``, encoded once."""
    return encode({"type": "status", **status}).decode()


def error_message(code: str, detail: str, task_id: str | None = None) -> str:
    message: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if task_id is not None:
        message["task_id"] = task_id
    return encode(message).decode()


def unknown_task_message(task_id: str) -> str:
    return error_message("unknown_task", f"no task with id {task_id}", task_id)


def unsubscribed_message(task_id: str) -> str:
    return encode({"type": "unsubscribed", "task_id": task_id}).decode()


PONG = encode({"type": "pong"}).decode()
