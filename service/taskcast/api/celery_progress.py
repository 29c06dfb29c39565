"""celery-progress's endpoints, so that its own JavaScript (``CeleryProgressBar`` and
``CeleryWebSocketProgressBar``) drives its bars against taskcast unchanged.

``GET /celery-progress/{task_id}/`` and ``GET /celery-progress/g/{group_id}/`` answer its
JSON; ``/ws/progress/{task_id}/`` is its WebSocket variant, served by the hub like any
other socket. The objects follow celery-progress's rules per state (its ``Progress`` and
``GroupProgress``), read from taskcast's status object, so a task that reported progress
in any convention taskcast reads fills its bar. Two differences, both deliberate: an
unknown id is 404 (celery-progress cannot tell it from a pending task), and a state of
the task's own naming is running, not "Unknown state" (a failure there).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

# pydantic reads TypedDicts (for their JSON Schema) only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from taskcast.api.responses import json_response
from taskcast.api.tasks import app_state, read_members, read_status, require_watch
from taskcast.api.validation import parse_task_id
from taskcast.api.ws import accept_single, client_frame, serve_connection, slow_client_left
from taskcast.live import protocol
from taskcast.live.subscriber import MailboxOverflow, Subscriber
from taskcast.state import AppState
from taskcast.status import Number, Status, decode_status
from taskcast_celery import states

# States in which the task has not started: celery-progress's ``pending`` bar.
_WAITING = frozenset({states.SENT, states.PENDING, states.RECEIVED})
# Its answers must never be cached: they change while the task runs.
_NO_CACHE = {"Cache-Control": "no-store"}


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
    shown = states.PENDING if state in _WAITING else state
    return {"state": shown, "complete": False, "success": None, "progress": _bar(status)}


def _ended(state: str, success: bool | None, result: Any) -> TaskProgress:
    # celery-progress's bar of an ended task, whatever it reported: full.
    bar: BarProgress = {"pending": False, "current": 100, "total": 100, "percent": 100}
    return {"state": state, "complete": True, "success": success, "progress": bar, "result": result}


# A member with no record (expired meanwhile): one not started, as celery-progress sees it.
_NOT_STARTED: TaskProgress = {
    "state": states.PENDING,
    "complete": False,
    "success": None,
    "progress": {"pending": True, "current": 0, "total": 100, "percent": 0, "description": ""},
}


def _bar(status: Status) -> BarProgress:
    """A running task's bar: its own numbers whatever convention it reported them in, with
    ``percent`` and ``description`` always there (celery-progress's JavaScript reads both)."""
    progress = status["progress"]
    waiting = status["state"] in _WAITING
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


async def task_endpoint(request: Request) -> Response:
    task_id = parse_task_id(request.path_params["task_id"])
    require_watch(request, task_id)
    status = await read_status(request, task_id)
    return json_response(task_progress(status), headers=_NO_CACHE)


async def group_endpoint(request: Request) -> Response:
    group_id = parse_task_id(request.path_params["group_id"], "group")
    require_watch(request, group_id, "group")
    members = await read_members(request, group_id)
    reading = await app_state(request).store.read_many(members)
    objects = [
        _NOT_STARTED if raw is None else task_progress(decode_status(task_id, raw))
        for task_id, raw in zip(members, reading.records, strict=True)
    ]
    return json_response(group_progress(objects), headers=_NO_CACHE)


async def ws_endpoint(websocket: WebSocket) -> None:
    task_id = await accept_single(websocket, "task")
    if task_id is None:
        return
    socket = _ProgressSocket(websocket, task_id)
    await serve_connection(websocket, socket.send, socket.receive, _nothing_yet, single=True)


def _nothing_yet(subscriber: Subscriber) -> None:
    """The task is watched from the client's first ``check_task_completion`` on."""


class _ProgressSocket:
    """One celery-progress WebSocket: the hub's status messages go out as celery-progress's
    objects; the client's ``check_task_completion`` is answered with the latest."""

    def __init__(self, websocket: WebSocket, task_id: str) -> None:
        self.websocket = websocket
        self.task_id = task_id
        # The latest status message from the hub, for a repeated check.
        self.latest: str | None = None

    async def send(self, frame: str) -> None:
        message = orjson.loads(frame)
        if message.get("type") == "status":
            self.latest = frame
            message.pop("type")
            frame = orjson.dumps(task_progress(message)).decode()
        # Anything else (unknown_task) goes as taskcast says it, before the close.
        await self.websocket.send_text(frame)

    async def receive(self, subscriber: Subscriber) -> int | None:
        """Act on client frames; return a close code, or None when the client left."""
        state: AppState = self.websocket.app.state.taskcast
        limit = state.settings.ws_max_message_bytes
        watching = False
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    slow_client_left(message, state.metrics)
                    return None
                text = client_frame(message, limit)
                if isinstance(text, int):
                    return text
                if not _is_check(text):
                    expected = 'expected {"type": "check_task_completion"}'
                    subscriber.reply(protocol.error_message("invalid_message", expected))
                elif not watching:
                    # The current status, at once or after one read, is the answer.
                    watching = True
                    state.hub.watch(self.task_id, subscriber)
                elif self.latest is not None:
                    subscriber.reply(self.latest)
        except MailboxOverflow:
            return protocol.CLOSE_FLOOD


def _is_check(text: str | None) -> bool:
    if text is None:
        return False
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(frame, dict) and frame.get("type") == "check_task_completion"


routes = [
    Route("/celery-progress/{task_id}/", task_endpoint, methods=["GET"]),
    Route("/celery-progress/g/{group_id}/", group_endpoint, methods=["GET"]),
    WebSocketRoute("/ws/progress/{task_id}/", ws_endpoint),
]
