"""WebSocket endpoints: ``/ws`` (many tasks and groups on one socket), ``/ws/tasks/{id}``
and ``/ws/groups/{id}``.

Each connection runs a receiver (client frames) and a sender (its mailbox) side by
side; whichever ends first ends the connection, and every subscription it held is
dropped from the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError
from starlette.routing import WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket

from taskcast.api import paths
from taskcast.auth import bearer
from taskcast.ids import is_task_id
from taskcast.limits import TokenBucket
from taskcast.live import protocol
from taskcast.live.protocol import Ping, ProtocolError, Subscribe, Unsubscribe, parse_command
from taskcast.live.subscriber import Interrupt, MailboxOverflow, Send, Subscriber
from taskcast.metrics import Metrics
from taskcast.state import AppState

# Reads a connection's client frames for its subscriber; returns the close code to end
# the connection with, or None when the client left.
Receiver = Callable[[Subscriber], Coroutine[Any, Any, int | None]]

# How long a close frame may wait for a congested socket before the connection is dropped.
_CLOSE_TIMEOUT = 1.0


logger = logging.getLogger(__name__)


async def ws_multiplexed(websocket: WebSocket) -> None:
    await websocket.accept()
    await _serve(websocket, first=None)


async def ws_task(websocket: WebSocket) -> None:
    task_id = await accept_single(websocket, "task")
    if task_id is not None:
        await _serve(websocket, first=task_id)


async def ws_group(websocket: WebSocket) -> None:
    group_id = await accept_single(websocket, "group")
    if group_id is None:
        return
    state: AppState = websocket.app.state.taskcast
    try:
        members = await _group_members(state, group_id)
    except ProtocolError as exc:
        await websocket.send_text(protocol.error_message(exc.code, exc.detail, group_id=group_id))
        await websocket.close(protocol.CLOSE_TRY_AGAIN_LATER)
        return
    if members is None:
        await websocket.send_text(protocol.unknown_group_message(group_id))
        await websocket.close(protocol.CLOSE_UNKNOWN_TASK)
        return
    await _serve(
        websocket,
        first=group_id,
        members=members,
    )


async def accept_single(websocket: WebSocket, what: str) -> str | None:
    """Accept a socket for one task or group; its id, or None once refused and closed."""
    # Accept first: a close before accepting would reach the client as an HTTP 403,
    # not as the close code the protocol promises.
    await websocket.accept()
    raw: str = websocket.path_params[f"{what}_id"]
    if not is_task_id(raw):
        shown = raw if len(raw) <= 64 else raw[:61] + "..."
        detail = f"{what} id must be a UUID, got {shown!r}"
        await websocket.send_text(protocol.error_message(f"invalid_{what}_id", detail))
        await websocket.close(protocol.CLOSE_INVALID_TASK_ID)
        return None
    watched_id = raw.lower()
    state: AppState = websocket.app.state.taskcast
    if not state.auth.may_watch(
        watched_id, websocket.query_params.get("token"), _handshake_credential(websocket)
    ):
        await websocket.send_text(
            protocol.error_message("unauthorized", protocol.UNAUTHORIZED_DETAIL)
        )
        await websocket.close(protocol.CLOSE_UNAUTHORIZED)
        return None
    return watched_id


def _handshake_credential(websocket: WebSocket) -> str | None:
    """The handshake's bearer credential. An API key counts only there, never in a frame."""
    return bearer(websocket.headers.get("authorization"))


async def _serve(
    websocket: WebSocket, first: str | None, members: tuple[str, ...] | None = None
) -> None:
    """Serve a connection: ``/ws`` (``first`` None), or one that watches ``first`` from
    the start: a task, or the group whose members are ``members``. Plain values, not a
    callable: the connection holds them as long as it lives, and they cost least."""
    state: AppState = websocket.app.state.taskcast
    hub = state.hub

    def start(subscriber: Subscriber) -> None:
        if first is not None and members is None:
            hub.watch(first, subscriber)
        elif first is not None and members is not None:
            hub.watch_group(first, members, subscriber)

    await serve_connection(
        websocket,
        websocket.send_text,
        lambda subscriber: _receive(
            websocket,
            state,
            subscriber,
            multiplexed=first is None,
            # A plain string held for the connection's life, not a bound callable: one
            # per socket, it is memory every idle subscriber pays.
            credential=_handshake_credential(websocket),
        ),
        start,
        single=first is not None,
    )


async def serve_connection(
    websocket: WebSocket,
    send: Send,
    receive: Receiver,
    start: Callable[[Subscriber], None],
    *,
    single: bool,
) -> None:
    """Serve an accepted socket within the connection limits: frames from the hub go out
    through ``send``, client frames are read by ``receive`` (which returns a close code,
    or None when the client left), and ``start`` subscribes whatever is watched from the
    start. ``single``: the socket ends with the terminal frame of what it watches."""
    state: AppState = websocket.app.state.taskcast
    # Behind a proxy this is the proxy's address unless uvicorn trusts its headers
    # (--proxy-headers, --forwarded-allow-ips): see docs/operations.md.
    client = websocket.client.host if websocket.client else ""
    refused = state.clients.acquire(client)
    if refused is not None:
        state.metrics.connections_refused[refused.limit].inc()
        await websocket.send_text(protocol.error_message("too_many_connections", refused.detail))
        await websocket.close(protocol.CLOSE_TRY_AGAIN_LATER)
        return
    try:
        await _stream(websocket, state, send, receive, start, single)
    finally:
        state.clients.release(client)


async def _stream(
    websocket: WebSocket,
    state: AppState,
    send: Send,
    receive: Receiver,
    start: Callable[[Subscriber], None],
    single: bool,
) -> None:
    hub = state.hub
    subscriber = Subscriber(send, hub.backed_up, single=single)
    sender = asyncio.create_task(subscriber.run())
    hub.connect(subscriber, sender)
    start(subscriber)
    # Client frames are read here, in the connection's own task, until the sender ends.
    interrupt = Interrupt()
    sender.add_done_callback(interrupt)
    code: int | None = None
    try:
        async with asyncio.timeout(None) as interrupt.timeout:
            code = await receive(subscriber)
    except TimeoutError:
        pass  # interrupted by the sender's end
    except Exception:
        # A client that leaves ends the read quietly; anything else is a bug here.
        logger.exception("WebSocket receiver failed")
    finally:
        interrupt.timeout = None
        hub.disconnect(subscriber)
        sender.cancel()
        (outcome,) = await asyncio.gather(sender, return_exceptions=True)
    if code is None and interrupt.fired:
        if isinstance(outcome, int):
            code = outcome  # the terminal frame went out
        elif isinstance(outcome, asyncio.CancelledError):
            code = protocol.CLOSE_SLOW_CLIENT  # reaped: the client stopped reading
    if code is not None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await websocket.close(code)


def client_frame(message: Message, limit: int) -> str | int | None:
    """A received message's text; a close code when it is over ``limit`` bytes; None when
    it is binary (which the protocols here do not use) and within the limit."""
    text = message.get("text")
    if text is None:
        return protocol.CLOSE_TOO_BIG if len(message.get("bytes") or b"") > limit else None
    if len(text) > limit // 4 and len(text.encode()) > limit:
        return protocol.CLOSE_TOO_BIG
    return str(text)


def slow_client_left(message: Message, metrics: Metrics) -> None:
    """Count a disconnect that the keepalive made (taskcast.live.transport)."""
    if message.get("code") == protocol.CLOSE_SLOW_CLIENT:
        metrics.slow_clients_closed.inc()


async def _receive(
    websocket: WebSocket,
    state: AppState,
    subscriber: Subscriber,
    multiplexed: bool,
    credential: str | None,
) -> int | None:
    """Act on client frames; return a close code, or None when the client left."""
    settings, metrics = state.settings, state.metrics
    limit = settings.ws_max_message_bytes
    loop = asyncio.get_running_loop()
    subscribes = TokenBucket(settings.subscribe_rate, settings.subscribe_burst, loop.time())
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                slow_client_left(message, metrics)
                return None
            text = client_frame(message, limit)
            if isinstance(text, int):
                return text
            if text is None:
                subscriber.reply(
                    protocol.error_message("invalid_message", "frames must be JSON text")
                )
                continue
            try:
                command = parse_command(text)
                if multiplexed and isinstance(command, Subscribe):
                    # Before anything else about it: every attempt spends a token.
                    _limit_rate(subscribes, loop.time(), command, metrics)
                await _act(command, state, subscriber, multiplexed, credential)
            except ProtocolError as exc:
                subscriber.reply(
                    protocol.error_message(exc.code, exc.detail, exc.task_id, exc.group_id)
                )
    except MailboxOverflow:
        return protocol.CLOSE_FLOOD


async def _act(
    command: Subscribe | Unsubscribe | Ping,
    state: AppState,
    subscriber: Subscriber,
    multiplexed: bool,
    credential: str | None,
) -> None:
    hub, settings = state.hub, state.settings
    if isinstance(command, Ping):
        subscriber.reply(protocol.PONG)
    elif not multiplexed:
        raise ProtocolError(
            "unknown_op", "only ping is accepted on /ws/tasks/{id} and /ws/groups/{id}"
        )
    elif isinstance(command, Subscribe):
        watched_id, task_id, group_id = command.watched_id, command.task_id, command.group_id
        # Refused like any bad frame (the socket stays open, its other tasks unaffected),
        # and before anything about the task or group is read.
        if not state.auth.may_watch(watched_id, command.token, credential):
            raise ProtocolError("unauthorized", protocol.UNAUTHORIZED_DETAIL, task_id, group_id)
        if (
            watched_id not in subscriber.watching
            and len(subscriber.watching) >= settings.max_subscriptions
        ):
            raise ProtocolError(
                "too_many_subscriptions",
                f"a socket may watch at most {settings.max_subscriptions} tasks and groups at once",
                task_id,
                group_id,
            )
        # The current status, sent at once or after one read, is the acknowledgement.
        if group_id is None:
            hub.watch(watched_id, subscriber)
            return
        members = await _group_members(state, group_id)
        if members is None:
            raise ProtocolError("unknown_group", f"no group with id {group_id}", group_id=group_id)
        hub.watch_group(group_id, members, subscriber)
    else:
        hub.unwatch(command.watched_id, subscriber)
        subscriber.discard(command.watched_id)
        subscriber.reply(protocol.unsubscribed_message(command.ids))


async def _group_members(state: AppState, group_id: str) -> tuple[str, ...] | None:
    """A group's members; a Redis failure is the client's to retry, not the socket's end."""
    try:
        return await state.group_members(group_id)
    except (RedisError, OSError) as exc:
        state.metrics.request_redis_errors.inc()
        logger.warning("reading group %s failed: %r", group_id, exc)
        raise ProtocolError(
            "unavailable", "could not read the group from Redis; try again", group_id=group_id
        ) from None


def _limit_rate(subscribes: TokenBucket, now: float, command: Subscribe, metrics: Metrics) -> None:
    if not subscribes.take(now):
        metrics.subscribes_refused.inc()
        raise ProtocolError(
            "rate_limited",
            f"over {subscribes.rate:g} subscribes a second (bursts of {subscribes.burst}); "
            "slow down",
            command.task_id,
            command.group_id,
        )


routes = [
    WebSocketRoute("/ws", ws_multiplexed),
    WebSocketRoute(paths.WS_TASK, ws_task),
    WebSocketRoute(paths.WS_GROUP, ws_group),
]
