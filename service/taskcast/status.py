"""The status object: what REST answers and what every WebSocket status message carries.

It is built from the raw bytes of a task's result-backend record, so REST and the hub
share one decoding of Celery's format. Its shape is typed once, here (``Status``); the
OpenAPI description is generated from these types.

Progress is read whichever way the task reported it: taskcast's ``ProgressReporter``
and Celery's documented ``{"current", "total"}``, celery-progress's ``ProgressRecorder``
(``{"pending", "current", "total", "percent", "description"}``), a lone ``percent``, and
a ``message`` (or ``description``, or ``status``) text. Values that are not what they
should be (text where a number belongs, a ``total`` of 0, NaN) are left out rather than
trusted: a status never shows a percent that its numbers do not support.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, NotRequired

import orjson
from pydantic import Field

# pydantic reads TypedDicts (for their JSON Schema) only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from taskcast_celery import states
from taskcast_celery.states import FINAL_STATES

Number = float | int


class Progress(TypedDict):
    """How far a running task is, as it reported it (and, for rate and ETA, as the
    WebSocket hub measured it)."""

    current: Number | None
    total: Number | None
    percent: Annotated[float | None, Field(ge=0, le=100)]
    message: str | None
    rate: Annotated[
        float | None,
        Field(
            ge=0,
            description="units of current per second, as the WebSocket hub measures it; "
            "null over REST, on a final status, and until the task has advanced",
        ),
    ]
    eta_s: Annotated[
        float | None,
        Field(
            ge=0,
            description="seconds left, from rate and total; 0 on SUCCESS; null over REST "
            "while running, and while rate or total is unknown",
        ),
    ]


class TaskError(TypedDict):
    """Why a task failed, or that it was cancelled, or (on RETRY) why it is tried again:
    the exception's type and message."""

    type: str
    message: str


# A task's or group's id in the JSON Schemas of /openapi.json.
UuidText = Annotated[str, Field(json_schema_extra={"format": "uuid"})]


class Status(TypedDict):
    """A task's status: ``GET /tasks/{id}``, and every WebSocket status message."""

    task_id: UuidText
    state: Annotated[
        str,
        Field(
            description="Celery's state as stored: SENT, PENDING, STARTED, PROGRESS, RETRY, "
            "SUCCESS, FAILURE, REVOKED, or a custom one"
        ),
    ]
    final: Annotated[bool, Field(description="true exactly for SUCCESS, FAILURE, REVOKED")]
    stalled: Annotated[
        bool,
        Field(
            description="true while a running task's worker has sent no heartbeat for "
            "TASKCAST_STALL_AFTER seconds (it probably died); false otherwise"
        ),
    ]
    progress: Progress | None
    result: Annotated[Any, Field(description="the task's return value, on SUCCESS")]
    error: TaskError | None
    owner: NotRequired[
        Annotated[
            str,
            Field(
                description="whose task it is, where it was started with one "
                "(taskcast.owned_by, or the owner field of POST /tasks/{name})"
            ),
        ]
    ]
    tags: NotRequired[Annotated[list[str], Field(description="the task's tags, with its owner")]]


def _number(value: Any) -> Number | None:
    """A finite number (never a bool, never text), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _text(meta: dict[str, Any]) -> str | None:
    """The task's message: ``message``, celery-progress's ``description``, or a
    ``status`` text, whichever it wrote."""
    for key in ("message", "description", "status"):
        value = meta.get(key)
        if isinstance(value, str):
            return value
    return None


def _progress(meta: dict[str, Any], *, complete: bool = False) -> Progress | None:
    current, total = _number(meta.get("current")), _number(meta.get("total"))
    percent = _number(meta.get("percent"))
    message = _text(meta)
    if current is None and total is None and percent is None and message is None:
        return None
    if complete:
        if total is not None:
            current = total
        # Done: whatever it last said it was doing ("sending") is no longer so.
        percent, message = 100.0, None
    elif percent is None and current is not None and total:
        # Computed here because tasks rarely write it: the tutorial this grew from read a
        # "percent" that its task never set, so every bar sat at 0.
        percent = current * 100.0 / total
    if percent is not None:
        percent = round(min(max(float(percent), 0.0), 100.0), 2)
    return {
        "current": current,
        "total": total,
        "percent": percent,
        "message": message,
        # One record says nothing of pace: the hub, which sees every change, fills these
        # in (taskcast.live.eta). A finished task has nothing left and no pace, so its
        # final status reads the same whoever asks, and whenever.
        "rate": None,
        "eta_s": 0.0 if complete else None,
    }


def _error(result: Any) -> TaskError:
    if isinstance(result, dict) and "exc_type" in result:
        raw = result.get("exc_message")
        if isinstance(raw, list | tuple):
            message = ", ".join(str(part) for part in raw)
        else:
            message = "" if raw is None else str(raw)
        return {"type": str(result["exc_type"]), "message": message}
    return {"type": "Error", "message": "" if result is None else str(result)}


def build_status(task_id: str, meta: dict[str, Any]) -> Status:
    """Turn a decoded result-backend record into the status object."""
    state = str(meta.get("status"))
    result = meta.get("result")
    progress = None
    value = None
    error = None
    if state == states.SUCCESS:
        value = result
        last = meta.get("progress")
        if isinstance(last, dict):
            progress = _progress(last, complete=True)
    elif state in FINAL_STATES or state == states.RETRY:
        # (On RETRY, the record's result is the exception the task is retried for.)
        error = _error(result)
    elif isinstance(result, dict):
        # PROGRESS, or a custom state whose meta carries progress.
        progress = _progress(result)
    status: Status = {
        "task_id": task_id,
        "state": state,
        "final": state in FINAL_STATES,
        # Whether a running task's heartbeat has gone silent (taskcast.liveness): filled
        # in by whoever read the heartbeat with the record.
        "stalled": False,
        "progress": progress,
        "result": value,
        "error": error,
    }
    owner = meta.get("owner")
    if isinstance(owner, str):
        tags = meta.get("tags")
        status["owner"] = owner
        status["tags"] = (
            [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else []
        )
    return status


# Twenty digits in a row: maybe an integer past 64 bits, which orjson reads as a float.
_LONG_INTEGER = re.compile(rb"\d{20}")


def _load(raw: bytes) -> Any:
    """A record's JSON. Python's json writes NaN and Infinity, which orjson refuses to
    read, and integers of any size, which orjson reads as floats: such records (a task
    that reported a NaN, or returned a very large number) are read the slow way."""
    if _LONG_INTEGER.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


# Celery writes a record's state first (``{"status": "SUCCESS", "result": ...``): where the
# record cannot be read whole (nested past what a JSON reader takes), its state still can.
_STATE_FIRST = re.compile(rb'^\{\s*"status"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')


def decode_status(task_id: str, raw: bytes) -> Status:
    """Decode a raw result-backend record. One that cannot be read whole keeps the state
    it starts with, when it has one (so a final one still ends its watch), and says why
    in its ``error``; with no state to read it is ``UNREADABLE``."""
    meta = _load(raw)
    if isinstance(meta, dict) and "status" in meta:
        return build_status(task_id, meta)
    found = _STATE_FIRST.match(raw)
    state = found.group(1).decode() if found else "UNREADABLE"
    reason = "nested too deeply to read" if found else "not JSON"
    return {
        "task_id": task_id,
        "state": state,
        "final": state in FINAL_STATES,
        "stalled": False,
        "progress": None,
        "result": None,
        "error": {"type": "UnreadableRecord", "message": f"the stored record is {reason}"},
    }


def kept_progress(raw: bytes) -> Progress | None:
    """The last progress a finished task had reported, as its final record keeps it
    (``taskcast_celery.backend``); the status object shows it only on SUCCESS."""
    meta = _load(raw)
    last = meta.get("progress") if isinstance(meta, dict) else None
    return _progress(last) if isinstance(last, dict) else None


class UnsendableError(ValueError):
    """A message that neither orjson nor Python's json can write."""


def encode(message: Any) -> bytes:
    """Encode a JSON message once, for every client that receives it.

    orjson writes neither integers past 64 bits, nor nesting past 254 levels, nor text
    holding a lone surrogate (Celery stores an undecodable file name that way), all of
    which a task's result may hold: such a message is written by Python's json instead.
    Raises ``UnsendableError`` when neither can (NaN, nesting past Python's recursion limit).
    """
    try:
        return orjson.dumps(message)
    except TypeError:
        pass
    try:
        return json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        reason = type(exc).__name__ if isinstance(exc, RecursionError) else str(exc)
        raise UnsendableError(reason) from None


def encode_status(status: Status, **first: str) -> bytes:
    """The status as JSON (after ``first``, such as ``type="status"``), encoded once.

    A status whose result cannot be written at all is marked, in place, so that every
    transport that reads it after carries the same: its state kept (a final one still
    ends its watch), its result left out, and the reason in its ``error``.
    """
    try:
        return encode({**first, **status})
    except UnsendableError as exc:
        mark_unsendable(status, str(exc))
        return orjson.dumps({**first, **status})


def encode_shaped(status: Status, shape: Callable[[Status], Any]) -> bytes:
    """``shape(status)`` (another client's view of it: celery-progress's object, the
    tutorial's reply) as JSON, with the status marked first when its result cannot be
    written, as ``encode_status`` marks it: the same answer as every other transport's."""
    try:
        return encode(shape(status))
    except UnsendableError as exc:
        mark_unsendable(status, str(exc))
        return encode(shape(status))


def mark_unsendable(status: Status, reason: str = "") -> None:
    """Leave out a result that cannot be written as JSON, saying so in the ``error``."""
    status["result"] = None
    because = f" ({reason})" if reason else ""
    status["error"] = {
        "type": "UnsendableResult",
        "message": f"the task's result cannot be sent as JSON{because}",
    }
