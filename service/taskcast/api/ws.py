"""WebSocket endpoints: ``/ws`` (many tasks and groups on one socket), ``/ws/tasks/{id}``
and ``/ws/groups/{id}``.

Each is a ``SocketConnection`` (``taskcast.api.connection``) that says only what it
does with a client frame, and what it watches from the start.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from taskcast.api import paths
from taskcast.api.connection import SocketConnection, accept_watch
from taskcast.api.guards import app_state, may_watch, watch_refused
from taskcast.limits import TokenBucket
from taskcast.live import protocol
from taskcast.live.protocol import Ping, ProtocolError, Subscribe, parse_command
from taskcast.state import AppState

logger = logging.getLogger(__name__)


class WatchSocket(SocketConnection):
    """``/ws/tasks/{id}`` and ``/ws/groups/{id}``: one task, or one group whose members
    are ``members``, from the start; the socket ends with its terminal update. Plain
    values, not a callable: the connection holds them as long as it lives."""

    __slots__ = ("members", "watched_id")

    def __init__(
        self, websocket: WebSocket, watched_id: str, members: tuple[str, ...] | None = None
    ) -> None:
        super().__init__(websocket, single=True)
        self.watched_id = watched_id
        self.members = members

    def on_connect(self) -> None:
        if self.members is None:
            self.state.hub.watch(self.watched_id, self)
        else:
            self.state.hub.watch_group(self.watched_id, self.members, self)

    async def on_frame(self, text: str | None) -> None:
        try:
            if text is None:
                raise ProtocolError("invalid_message", "frames must be JSON text")
            if not isinstance(parse_command(text), Ping):
                raise ProtocolError(
                    "unknown_op", "only ping is accepted on /ws/tasks/{id} and /ws/groups/{id}"
                )
            self.reply(protocol.PONG)
        except ProtocolError as exc:
            self.reply(
                protocol.error_reply(exc.code, exc.detail, exc.task_id, exc.group_id, exc.feed)
            )


class MultiplexSocket(SocketConnection):
    """``/ws``: subscribes and unsubscribes to any number of tasks and groups, within the
    subscription limit and the subscribe rate."""

    __slots__ = ("subscribes",)

    def __init__(self, websocket: WebSocket) -> None:
        super().__init__(websocket)
        settings = self.state.settings
        loop = asyncio.get_running_loop()
        self.subscribes = TokenBucket(
            settings.subscribe_rate, settings.subscribe_burst, loop.time()
        )

    async def on_frame(self, text: str | None) -> None:
        try:
            if text is None:
                raise ProtocolError("invalid_message", "frames must be JSON text")
            command = parse_command(text)
            if isinstance(command, Ping):
                self.reply(protocol.PONG)
            elif isinstance(command, Subscribe):
                await self._subscribe(command)
            else:
                self.state.hub.unwatch(command.watched_id, self)
                self.discard(command.watched_id)
                self.reply(protocol.unsubscribed(command.ids))
        except ProtocolError as exc:
            self.reply(
                protocol.error_reply(exc.code, exc.detail, exc.task_id, exc.group_id, exc.feed)
            )

    async def _subscribe(self, command: Subscribe) -> None:
        state = self.state
        watched_id, task_id, group_id = command.watched_id, command.task_id, command.group_id
        # Before anything else about it: every attempt spends a token.
        if not self.subscribes.take(asyncio.get_running_loop().time()):
            state.metrics.subscribes_refused.inc()
            raise ProtocolError(
                "rate_limited",
                f"over {self.subscribes.rate:g} subscribes a second (bursts of "
                f"{self.subscribes.burst}); slow down",
                task_id,
                group_id,
            )
        # Refused like any bad frame (the socket stays open, its other tasks unaffected),
        # and before anything about the task or group is read. An API key counts only in
        # the handshake, never in a frame. (A feed's key is what its token binds.)
        if not may_watch(self.websocket, watched_id, command.token):
            if command.feed is not None:
                raise ProtocolError("unauthorized", watch_refused("feed"), **command.ids)
            what = "task" if group_id is None else "group"
            raise ProtocolError("unauthorized", watch_refused(what), task_id, group_id)
        limit = state.settings.max_subscriptions
        if watched_id not in self.watching and len(self.watching) >= limit:
            raise ProtocolError(
                "too_many_subscriptions",
                f"a socket may watch at most {limit} tasks, groups and feeds at once",
                **command.ids,
            )
        if command.feed is not None:
            # Answered with a feed message once its tasks are read.
            state.hub.watch_feed(command.feed, self, command.since)
            return
        # The current status, sent at once or after one read, is the acknowledgement.
        if group_id is None:
            state.hub.watch(watched_id, self)
            return
        members = await group_members(state, group_id)
        if members is None:
            raise ProtocolError("unknown_group", f"no group with id {group_id}", group_id=group_id)
        state.hub.watch_group(group_id, members, self)


async def group_members(state: AppState, group_id: str) -> tuple[str, ...] | None:
    """A group's members; a Redis failure is the client's to retry, not the socket's end."""
    try:
        return await state.group_members(group_id)
    except (RedisError, OSError) as exc:
        state.metrics.request_redis_errors.inc()
        logger.warning("reading group %s failed: %r", group_id, exc)
        raise ProtocolError(
            "unavailable", "could not read the group from Redis; try again", group_id=group_id
        ) from None


async def ws_multiplexed(websocket: WebSocket) -> None:
    await websocket.accept()
    await MultiplexSocket(websocket).handle()


async def ws_task(websocket: WebSocket) -> None:
    task_id = await accept_watch(websocket, "task")
    if task_id is not None:
        await WatchSocket(websocket, task_id).handle()


async def ws_group(websocket: WebSocket) -> None:
    group_id = await accept_watch(websocket, "group")
    if group_id is None:
        return
    try:
        members = await group_members(app_state(websocket), group_id)
    except ProtocolError as exc:
        await websocket.send_text(protocol.error_message(exc.code, exc.detail, group_id=group_id))
        await websocket.close(protocol.CLOSE_TRY_AGAIN_LATER)
        return
    if members is None:
        await websocket.send_text(protocol.unknown_group(group_id).text)
        await websocket.close(protocol.CLOSE_UNKNOWN_TASK)
        return
    await WatchSocket(websocket, group_id, members).handle()


routes = [
    WebSocketRoute("/ws", ws_multiplexed),
    WebSocketRoute(paths.WS_TASK, ws_task),
    WebSocketRoute(paths.WS_GROUP, ws_group),
]
