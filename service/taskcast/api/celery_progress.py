"""celery-progress's endpoints, so that its own JavaScript (``CeleryProgressBar`` and
``CeleryWebSocketProgressBar``) drives its bars against taskcast unchanged.

``GET /celery-progress/{task_id}/`` and ``GET /celery-progress/g/{group_id}/`` answer its
JSON (``taskcast.bars``); ``/ws/progress/{task_id}/`` is its WebSocket variant, a
connection of the hub like any other, writing each update's celery-progress form (made
once per change, for every such socket). One difference from celery-progress,
deliberate: an unknown id is 404 (celery-progress cannot tell it from a pending task).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from taskcast.api.connection import SocketConnection, accept_watch
from taskcast.api.guards import Guard, app_state, guarded, read_members, read_status
from taskcast.api.validation import parse_task_id
from taskcast.bars import NOT_STARTED, group_progress, task_progress
from taskcast.live import protocol
from taskcast.live.protocol import Update
from taskcast.status import decode_status, encode, encode_shaped

# Its answers must never be cached: they change while the task runs.
_NO_CACHE = {"Cache-Control": "no-store"}


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json", headers=_NO_CACHE)


async def task_endpoint(request: Request) -> Response:
    task_id = parse_task_id(request.path_params["task_id"])
    status = await read_status(request, task_id)
    return _json(encode_shaped(status, task_progress))


async def group_endpoint(request: Request) -> Response:
    group_id = parse_task_id(request.path_params["group_id"], "group")
    members = await read_members(request, group_id)
    reading = await app_state(request).store.read_many(members)
    # (A group's object sums its members' bars: no member's result is in it.)
    objects = [
        NOT_STARTED if raw is None else task_progress(decode_status(task_id, raw))
        for task_id, raw in zip(members, reading.records, strict=True)
    ]
    return _json(encode(group_progress(objects)))


class ProgressSocket(SocketConnection):
    """One celery-progress WebSocket: the hub's status updates go out as celery-progress's
    objects; the client's ``check_task_completion`` is answered with the latest. The
    task is watched from the client's first check on."""

    __slots__ = ("latest", "task_id")

    def __init__(self, websocket: WebSocket, task_id: str) -> None:
        super().__init__(websocket, single=True)
        self.task_id = task_id
        # The latest status update from the hub, for a repeated check.
        self.latest: Update | None = None

    def write(self, update: Update) -> Coroutine[Any, Any, None]:
        if update.type == "status":
            self.latest = update
        # Anything else (unknown_task) goes as taskcast says it, before the close.
        return self.websocket.send_text(update.bar)

    async def on_frame(self, text: str | None) -> None:
        if not _is_check(text):
            expected = 'expected {"type": "check_task_completion"}'
            self.reply(protocol.error_reply("invalid_message", expected))
        elif self.task_id not in self.watching and self.latest is None:
            # The current status, at once or after one read, is the answer.
            self.state.hub.watch(self.task_id, self)
        elif self.latest is not None:
            self.reply(self.latest)


def _is_check(text: str | None) -> bool:
    if text is None:
        return False
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(frame, dict) and frame.get("type") == "check_task_completion"


async def ws_endpoint(websocket: WebSocket) -> None:
    task_id = await accept_watch(websocket, "task")
    if task_id is not None:
        await ProgressSocket(websocket, task_id).handle()


routes = [
    guarded("/celery-progress/{task_id}/", task_endpoint, guard=Guard.WATCH),
    guarded("/celery-progress/g/{group_id}/", group_endpoint, guard=Guard.WATCH),
    WebSocketRoute("/ws/progress/{task_id}/", ws_endpoint),
]
