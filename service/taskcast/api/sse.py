"""Server-Sent Events: the hub's messages as an event stream, for networks that break
WebSockets (some proxies, some mobile carriers).

``GET /sse/tasks/{id}``, ``GET /sse/groups/{id}``, and ``GET /sse?task=..&group=..`` for
many on one stream (a browser opens about six HTTP/1.1 connections per origin). Each
event's ``data`` is the WebSocket message (``status``, ``group``, ``error``), its
``event`` the message's type. sse-starlette does the framing, the keep-alive comments
and the stream's end on shutdown.

Resuming: an event's id says which state of every task and group on the stream the
client has seen (the start of each id, with a short digest of its state). A
browser sends the last one back when it reconnects (``Last-Event-ID``; a new
EventSource can pass ``?last_event_id=``), and the stream then sends only what changed
since: no status twice, and a final missed in the drop is sent again. Once everything
on the stream has ended, an ``end`` event closes it; a browser that reconnects anyway
is answered 204, which tells it to stop.
"""

from __future__ import annotations

import asyncio
import functools
import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from taskcast.api.errors import ApiError
from taskcast.api.tasks import app_state
from taskcast.api.validation import parse_task_id
from taskcast.auth import bearer
from taskcast.live import protocol
from taskcast.live.subscriber import Kind, Subscriber
from taskcast.state import AppState

# Seconds between keep-alive comments: under the idle timeout of common proxies (60 s).
PING_SECONDS = 15
# How long a browser waits before reconnecting a dropped stream, in ms.
RETRY_MS = 2000
# The event that ends a stream, and the id that says so when a browser comes back.
END_ID = "end"
_END = ServerSentEvent(orjson.dumps({"type": "end"}).decode(), event="end", id=END_ID).encode()
# One part of an event id: the start of an id (8 hex digits), then the digest of the
# state last sent for it (8 hex digits, after an "f" when the state is terminal).
_SEEN = re.compile(r"([0-9a-f]{8})(f?[0-9a-f]{8})")
_ID_PREFIX = 8
_QUERY_NAMES = frozenset({"task", "group", "token", "last_event_id"})
# The errors that end an id's part of a stream.
_ENDING = frozenset({"unknown_task", "unknown_group", "unauthorized"})


@dataclass(frozen=True, slots=True)
class Watched:
    """A task or group a stream follows, with the token that opens it."""

    kind: str  # "task" or "group"
    id: str
    token: str | None


@dataclass(frozen=True, slots=True)
class _Frame:
    """What the stream needs to know of one hub message."""

    type: str
    watched_id: str | None
    version: str
    terminal: bool


@functools.lru_cache(maxsize=16)
def _frame(text: str) -> _Frame:
    """Read one hub message. Cached: the hub hands the same message to every subscriber
    of a task in a row, so a change is read once, not once per stream."""
    message: dict[str, Any] = orjson.loads(text)
    kind = str(message.get("type"))
    watched_id = message.get("group_id") if kind == "group" else message.get("task_id")
    if watched_id is None:
        watched_id = message.get("group_id")
    terminal = bool(message.get("final")) or (kind == "error" and message.get("code") in _ENDING)
    # The estimates move with the clock; a state whose only change is its ETA has been
    # seen already.
    progress = message.get("progress")
    if isinstance(progress, dict):
        message["progress"] = {k: v for k, v in progress.items() if k not in ("rate", "eta_s")}
    digest = zlib.crc32(orjson.dumps(message, option=orjson.OPT_SORT_KEYS))
    # A terminal state's digest never equals a running one's: no final can be taken for
    # a state the client had.
    version = f"{'f' if terminal else ''}{digest:08x}"
    return _Frame(kind, watched_id, version, terminal)


def seen_versions(last_event_id: str | None, watched: list[Watched]) -> dict[str, str]:
    """What a client that last saw ``last_event_id`` had of each id on this stream. Parts
    are matched by id, so what another stream's event says of a task counts here too (a
    client that reopens with one more task is not sent the others again); a garbled id
    says nothing."""
    if not last_event_id:
        return {}
    by_prefix: dict[str, str] = {}
    for part in last_event_id.split("."):
        found = _SEEN.fullmatch(part)
        if found is None:
            return {}
        by_prefix[found.group(1)] = found.group(2)
    # (Two ids of a stream sharing a prefix would only have a state sent again: a
    # digest covers the id, so one id's digest never matches another's state.)
    return {
        item.id: by_prefix[item.id[:_ID_PREFIX]]
        for item in watched
        if item.id[:_ID_PREFIX] in by_prefix
    }


class EventStream:
    """One stream's events: a Subscriber of the hub whose frames become events, handed to
    sse-starlette one at a time. A frame waits while the one before it is still being
    written, so the subscriber backs up, keeps only the newest per task, and is reaped
    if its client stops reading: the same rules as a WebSocket's."""

    def __init__(
        self,
        state: AppState,
        watched: list[Watched],
        seen: dict[str, str],
        members: dict[str, tuple[str, ...] | None],
        refused: set[str],
    ) -> None:
        self.state = state
        self.watched = watched
        self.seen = seen
        self.members = members
        self.refused = refused
        self.open = {item.id for item in watched}
        self.subscriber = Subscriber(self._send, state.hub.backed_up)
        # The event ready for the writer (and whether it ends the stream), and the
        # futures of a writer waiting for one and of a frame waiting for room.
        self._ready: tuple[bytes, bool] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    def _event_id(self) -> str:
        return ".".join(
            f"{item.id[:_ID_PREFIX]}{self.seen[item.id]}"
            for item in self.watched
            if item.id in self.seen
        )

    async def _send(self, text: str) -> None:
        frame = _frame(text)
        watched_id = frame.watched_id
        if watched_id is None or watched_id not in self.open:
            return  # an answer to nothing this stream asked (there is no client request)
        if frame.terminal:
            self.open.discard(watched_id)
        ends = not self.open
        if self.seen.get(watched_id) == frame.version:
            if not ends:
                return  # the client has this state already
            chunk = b""
        else:
            self.seen[watched_id] = frame.version
            chunk = ServerSentEvent(text, event=frame.type, id=self._event_id()).encode()
        while self._ready is not None:
            self._room = asyncio.get_running_loop().create_future()
            await self._room
        self._ready = (chunk + _END if ends else chunk, ends)
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)

    async def events(self) -> AsyncIterator[bytes | ServerSentEvent]:
        """The stream, for sse-starlette: the reconnect delay, then every event."""
        yield ServerSentEvent(comment="taskcast", retry=RETRY_MS)
        hub = self.state.hub
        sender = asyncio.create_task(self.subscriber.run())
        hub.connect(self.subscriber, sender)
        try:
            self._start()
            while True:
                while self._ready is None:
                    self._writer = asyncio.get_running_loop().create_future()
                    # The sender ends only when the hub's reaper cancels it (the client
                    # stopped reading) or a send failed: either way the stream is over.
                    await asyncio.wait((self._writer, sender), return_when="FIRST_COMPLETED")
                    if sender.done():
                        return
                chunk, ends = self._ready
                self._ready = None
                if self._room is not None and not self._room.done():
                    self._room.set_result(None)
                if chunk:
                    yield chunk
                if ends:
                    return
        finally:
            hub.disconnect(self.subscriber)
            sender.cancel()

    def _start(self) -> None:
        hub = self.state.hub
        for item in self.watched:
            if item.id in self.refused:
                ids = {f"{item.kind}_id": item.id}
                refusal = protocol.error_message(
                    "unauthorized", protocol.UNAUTHORIZED_DETAIL, **ids
                )
                self.subscriber.offer(item.id, refusal, Kind.UNKNOWN)
            elif item.kind == "task":
                hub.watch(item.id, self.subscriber)
            elif (members := self.members[item.id]) is None:
                unknown = protocol.unknown_group_message(item.id)
                self.subscriber.offer(item.id, unknown, Kind.UNKNOWN)
            else:
                hub.watch_group(item.id, members, self.subscriber)


class _Response(EventSourceResponse):
    """The event stream, holding one of the client's connections while it lasts."""

    def __init__(self, stream: EventStream, client: str) -> None:
        super().__init__(
            stream.events(),
            ping=PING_SECONDS,
            ping_message_factory=lambda: ServerSentEvent(comment="ping"),
            # A write that waits this long on the client ends the stream: the client
            # stopped reading (as the hub's reaper decides for a WebSocket).
            send_timeout=stream.state.settings.slow_client_timeout,
        )
        self.client = client
        self.state = stream.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            self.state.metrics.slow_clients_closed.inc()
        finally:
            self.state.clients.release(self.client)


async def _open(request: Request, watched: list[Watched], many: bool = False) -> Response:
    """The stream of ``watched``. On ``/sse`` (``many``) an id whose token does not open
    it is refused alone, with an ``unauthorized`` error event, as ``/ws`` refuses one
    subscribe (an EventSource cannot read the body of a 401); a stream that opens no id at
    all is a 401."""
    state = app_state(request)
    credential = bearer(request.headers.get("authorization"))
    refused = {
        item.id for item in watched if not state.auth.may_watch(item.id, item.token, credential)
    }
    if refused and (not many or len(refused) == len(watched)):
        raise ApiError(
            401,
            "unauthorized",
            f"{_first(watched, refused)} needs its watch token (?token= after its id) or an "
            "API key (Authorization: Bearer); tokens expire",
            {"WWW-Authenticate": 'Bearer realm="taskcast"'},
        )
    last_event_id = request.headers.get("last-event-id") or request.query_params.get(
        "last_event_id"
    )
    if last_event_id == END_ID:
        # A browser reconnecting after the end: 204 tells it to stop for good.
        return Response(status_code=204)
    members = {
        item.id: await state.group_members(item.id)
        for item in watched
        if item.kind == "group" and item.id not in refused
    }
    client = request.client.host if request.client else ""
    too_many = state.clients.acquire(client)
    if too_many is not None:
        state.metrics.connections_refused[too_many.limit].inc()
        raise ApiError(503, "too_many_connections", too_many.detail, {"Retry-After": "5"})
    seen = seen_versions(last_event_id, watched)
    stream = EventStream(state, watched, seen, members, refused)
    return _Response(stream, client)


def _first(watched: list[Watched], ids: set[str]) -> str:
    item = next(item for item in watched if item.id in ids)
    return f"{item.kind} {item.id}"


def _one(request: Request, kind: str) -> Watched:
    watched_id = parse_task_id(request.path_params[f"{kind}_id"], kind)
    extra = set(request.query_params) - {"token", "last_event_id"}
    if extra:
        raise ApiError(400, "invalid_query", f"unexpected query parameter {sorted(extra)[0]!r}")
    return Watched(kind, watched_id, request.query_params.get("token"))


async def sse_task(request: Request) -> Response:
    return await _open(request, [_one(request, "task")])


async def sse_group(request: Request) -> Response:
    return await _open(request, [_one(request, "group")])


def parse_watched(items: list[tuple[str, str]], limit: int) -> list[Watched]:
    """The tasks and groups a ``/sse`` query names, each with the ``token`` after it."""
    watched: list[Watched] = []
    for name, value in items:
        if name not in _QUERY_NAMES:
            raise ApiError(400, "invalid_query", f"unexpected query parameter {name!r}")
        if name == "token":
            if not watched or watched[-1].token is not None:
                raise ApiError(
                    400, "invalid_query", "each token follows the task or group id it opens"
                )
            watched[-1] = Watched(watched[-1].kind, watched[-1].id, value)
        elif name in ("task", "group"):
            watched.append(Watched(name, parse_task_id(value, name), None))
    if not watched:
        raise ApiError(400, "invalid_query", "name at least one ?task= or ?group= to follow")
    if len({item.id for item in watched}) != len(watched):
        raise ApiError(400, "invalid_query", "each task and group may be named once")
    if len(watched) > limit:
        raise ApiError(
            400, "invalid_query", f"a stream may follow at most {limit} tasks and groups"
        )
    return watched


async def sse_many(request: Request) -> Response:
    limit = app_state(request).settings.max_subscriptions
    return await _open(request, parse_watched(request.query_params.multi_items(), limit), many=True)


routes = [
    Route("/sse", sse_many, methods=["GET"]),
    Route("/sse/tasks/{task_id}", sse_task, methods=["GET"]),
    Route("/sse/groups/{group_id}", sse_group, methods=["GET"]),
]
