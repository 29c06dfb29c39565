"""The status object: what REST answers and what every WebSocket status message carries.

It is built from the raw bytes of a task's result-backend record, so REST and the hub
share one decoding of Celery's format.
"""

from __future__ import annotations

from typing import Any

import orjson
from celery import states

from taskcast_celery.states import FINAL_STATES

Status = dict[str, Any]


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _progress(meta: dict[str, Any], *, complete: bool = False) -> dict[str, Any] | None:
    current, total = _number(meta.get("current")), _number(meta.get("total"))
    if current is None and total is None:
        return None
    if complete and total is not None:
        current = total
    percent = _number(meta.get("percent"))
    if complete:
        percent = 100.0
    elif percent is None and current is not None and total:
        # Computed here because tasks rarely write it: the tutorial this grew from read a
        # "percent" that its task never set, so every bar sat at 0.
        percent = current * 100.0 / total
    if percent is not None:
        percent = round(min(max(float(percent), 0.0), 100.0), 2)
    message = meta.get("message")
    return {
        "current": current,
        "total": total,
        "percent": percent,
        "message": message if isinstance(message, str) else None,
        # One record says nothing of pace: the hub, which sees every change, fills these
        # in (taskcast.live.eta). A finished task has nothing left and no pace, so its final
        # status reads the same whoever asks, and whenever.
        "rate": None,
        "eta_s": 0.0 if complete else None,
    }


def _error(result: Any) -> dict[str, str]:
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
    elif state in FINAL_STATES:
        error = _error(result)
    elif isinstance(result, dict):
        # PROGRESS, or a custom state whose meta carries current/total.
        progress = _progress(result)
    return {
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


def decode_status(task_id: str, raw: bytes) -> Status:
    """Decode a raw result-backend record; an unreadable one becomes a FAILURE-like status."""
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or "status" not in meta:
        return {
            "task_id": task_id,
            "state": "UNREADABLE",
            "final": False,
            "stalled": False,
            "progress": None,
            "result": None,
            "error": {"type": "UnreadableRecord", "message": "the stored record is not JSON"},
        }
    return build_status(task_id, meta)


def kept_progress(raw: bytes) -> dict[str, Any] | None:
    """The last progress a finished task had reported, as its final record keeps it
    (``taskcast_celery.backend``); the status object shows it only on SUCCESS."""
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    last = meta.get("progress") if isinstance(meta, dict) else None
    return _progress(last) if isinstance(last, dict) else None


def encode(message: dict[str, Any]) -> bytes:
    """Encode a JSON message once, for every client that receives it."""
    return orjson.dumps(message)
