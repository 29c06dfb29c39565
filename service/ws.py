"""WebSocket endpoints: ``/ws`` (many tasks on one socket) and ``/ws/tasks/{id}``.

Each connection runs a receiver (client frames) and a sender (its mailbox) side by
side; whichever ends first ends the connection, and every subscription it held is
dropped from the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from service import protocol
from service.auth import bearer
from service.hub import Hub
from service.limits import TokenBucket
from service.metrics import Metrics
from service.protocol import Ping, ProtocolError, Subscribe, Unsubscribe, parse_command
from service.settings import Settings
from service.state import AppState
from service.subscriber import MailboxOverflow, Subscriber
from service.validation import is_task_id

# How long a close frame may wait for a congested socket before the connection is dropped.
_CLOSE_TIMEOUT = 1.0


async def ws_multiplexed(websocket: WebSocket) -> None:
    await websocket.accept()
    await _serve(websocket, first_task=None)


async def ws_task(websocket: WebSocket) -> None:
    # Accept first: a close before accepting would reach the client as an HTTP 403,
    # not as the close code the protocol promises.
    await websocket.accept()
    raw = websocket.path_params["task_id"]
    if not is_task_id(raw):
        shown = raw if len(raw) <= 64 else raw[:61] + "..."
        detail = f"task id must be a UUID, got {shown!r}"
        await websocket.send_text(protocol.error_message("invalid_task_id", detail))
        await websocket.close(protocol.CLOSE_INVALID_TASK_ID)
        return
    task_id = raw.lower()
    if not _may_watch(websocket)(task_id, websocket.query_params.get("token")):
        await websocket.send_text(
            protocol.error_message("unauthorized", protocol.UNAUTHORIZED_DETAIL)
        )
        await websocket.close(protocol.CLOSE_UNAUTHORIZED)
        return
    await _serve(websocket, first_task=task_id)


def _may_watch(websocket: WebSocket) -> Callable[[str, str | None], bool]:
    """Whether this connection may follow a task, given the task's token if it sent one.
    An API key counts only in the handshake's Authorization header, never in a frame."""
    state: AppState = websocket.app.state.taskcast
    return partial(
        state.auth.may_watch, bearer_credential=bearer(websocket.headers.get("authorization"))
    )


async def _serve(websocket: WebSocket, first_task: str | None) -> None:
    state: AppState = websocket.app.state.taskcast
    # Behind a proxy this is the proxy's address unless uvicorn trusts its headers
    # (--proxy-headers, --forwarded-allow-ips): see docs/operations.md.
    client = websocket.client.host if websocket.client else ""
    if not state.clients.acquire(client):
        state.metrics.connections_refused.inc()
        detail = f"this address already has {state.clients.limit} connections open; retry later"
        await websocket.send_text(protocol.error_message("too_many_connections", detail))
        await websocket.close(protocol.CLOSE_TRY_AGAIN_LATER)
        return
    try:
        await _stream(websocket, state, first_task)
    finally:
        state.clients.release(client)


async def _stream(websocket: WebSocket, state: AppState, first_task: str | None) -> None:
    hub = state.hub
    subscriber = Subscriber(websocket.send_text, hub.stalled, single=first_task is not None)
    sender = asyncio.create_task(subscriber.run())
    receiver = asyncio.create_task(
        _receive(
            websocket,
            hub,
            subscriber,
            state.settings,
            multiplexed=first_task is None,
            may_watch=_may_watch(websocket),
        )
    )
    hub.connect(subscriber, sender)
    if first_task is not None:
        hub.watch(first_task, subscriber)
    try:
        await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.disconnect(subscriber)
        sender.cancel()
        receiver.cancel()
        outcomes = await asyncio.gather(sender, receiver, return_exceptions=True)
    if sender.cancelled() and not receiver.done():
        # Cancelled by the hub's reaper: the client stopped reading.
        code: int | None = protocol.CLOSE_SLOW_CLIENT
    else:
        code = next((outcome for outcome in outcomes if isinstance(outcome, int)), None)
    if code is not None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await websocket.close(code)


async def _receive(
    websocket: WebSocket,
    hub: Hub,
    subscriber: Subscriber,
    settings: Settings,
    multiplexed: bool,
    may_watch: Callable[[str, str | None], bool],
) -> int | None:
    """Act on client frames; return a close code, or None when the client left."""
    limit = settings.ws_max_message_bytes
    metrics: Metrics = websocket.app.state.taskcast.metrics
    loop = asyncio.get_running_loop()
    subscribes = TokenBucket(settings.subscribe_rate, settings.subscribe_burst, loop.time())
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            text = message.get("text")
            if text is None:
                if len(message.get("bytes") or b"") > limit:
                    return protocol.CLOSE_TOO_BIG
                subscriber.reply(
                    protocol.error_message("invalid_message", "frames must be JSON text")
                )
                continue
            if len(text) > limit // 4 and len(text.encode()) > limit:
                return protocol.CLOSE_TOO_BIG
            try:
                command = parse_command(text)
                if multiplexed and isinstance(command, Subscribe):
                    # Before anything else about it: every attempt spends a token.
                    _limit_rate(subscribes, loop.time(), command.task_id, metrics)
                _act(command, hub, subscriber, settings, multiplexed, may_watch)
            except ProtocolError as exc:
                subscriber.reply(protocol.error_message(exc.code, exc.detail, exc.task_id))
    except MailboxOverflow:
        return protocol.CLOSE_FLOOD


def _act(
    command: Subscribe | Unsubscribe | Ping,
    hub: Hub,
    subscriber: Subscriber,
    settings: Settings,
    multiplexed: bool,
    may_watch: Callable[[str, str | None], bool],
) -> None:
    if isinstance(command, Ping):
        subscriber.reply(protocol.PONG)
    elif not multiplexed:
        raise ProtocolError("unknown_op", "only ping is accepted on /ws/tasks/{id}")
    elif isinstance(command, Subscribe):
        task_id = command.task_id
        # Refused like any bad frame (the socket stays open, its other tasks unaffected),
        # and before anything about the task is read.
        if not may_watch(task_id, command.token):
            raise ProtocolError("unauthorized", protocol.UNAUTHORIZED_DETAIL, task_id)
        if task_id not in subscriber.tasks and len(subscriber.tasks) >= settings.max_subscriptions:
            raise ProtocolError(
                "too_many_subscriptions",
                f"a socket may watch at most {settings.max_subscriptions} tasks at once",
                task_id,
            )
        # The current status, sent at once or after one read, is the acknowledgement.
        hub.watch(task_id, subscriber)
    else:
        hub.unwatch(command.task_id, subscriber)
        subscriber.discard(command.task_id)
        subscriber.reply(protocol.unsubscribed_message(command.task_id))


def _limit_rate(subscribes: TokenBucket, now: float, task_id: str, metrics: Metrics) -> None:
    if not subscribes.take(now):
        metrics.subscribes_refused.inc()
        raise ProtocolError(
            "rate_limited",
            f"over {subscribes.rate:g} subscribes a second (bursts of {subscribes.burst}); "
            "slow down",
            task_id,
        )


routes = [
    WebSocketRoute("/ws", ws_multiplexed),
    WebSocketRoute("/ws/tasks/{task_id}", ws_task, name="ws_task"),
]
