"""Server-Sent Events: the hub's messages as an event stream, for networks that break
WebSockets (some proxies, some mobile carriers).

``GET /sse/tasks/{id}``, ``GET /sse/groups/{id}``, and ``GET /sse?task=..&group=..`` for
many on one stream (a browser opens about six HTTP/1.1 connections per origin). Each
event's ``data`` is the WebSocket message (``status``, ``group``, ``error``), its
``event`` the message's type. sse-starlette's ``ServerSentEvent`` does the framing.

Resuming: an event's id says which state of every task and group on the stream the
client has seen (the start of each id, with a short digest of its state). A
browser sends the last one back when it reconnects (``Last-Event-ID``; a new
EventSource can pass ``?last_event_id=``), and the stream then sends only what changed
since: no status twice, and a final missed in the drop is sent again. Once everything
on the stream has ended, an ``end`` event closes it; a browser that reconnects anyway
is answered 204, which tells it to stop.

``GET /sse/feeds/{owner}``: an owner's feed (``FeedStream``), as ``/ws`` subscribes to
it: a ``feed`` event (the owner's unfinished tasks), then a ``status`` event for every
status of every task of the owner. A feed never ends. Its ids are times on Redis's clock
(ms): the ``feed`` event's is its ``at``, a status event's the time it was written; a
client back with ``Last-Event-ID: N`` resubscribes from N, as ``/ws``'s ``since`` does
(the finals of the tasks that ended since then, less the hub's margin, with every
unfinished task), so a final missed in a drop is sent again.

How an event reaches the client: as a WebSocket frame does (``taskcast.live.subscriber``).
The hub hands each update to every stream (a ``Connection``), whose write makes the event
at once, from the hub's own call, while the socket has room: uvicorn's HTTP send only
suspends while that one connection's buffer is full, and a send that would wait is
finished by the stream's sender task, with the mailbox keeping the newest update per
task behind it and the hub's reaper cancelling it when the client stopped reading. No
task switch, no timer and nothing that outlives the call per event and stream.

This is why the response is a small one of our own and not sse-starlette's
``EventSourceResponse`` (docs/benchmarks.md, "Server-Sent Events next to WebSocket",
has the measurements): that one pulls every event out of a generator in a task of its
own (a task switch per event and stream), puts a cancel scope and a timer around every
send (its ``send_timeout``), and runs four tasks per stream (the stream, its pings, a
shutdown watcher, a disconnect listener). What it gave is provided here instead:

- The headers (``Cache-Control: no-store``, ``Connection: keep-alive``,
  ``X-Accel-Buffering: no``, ``text/event-stream``), and HEAD answered without a stream.
- Client disconnect: the request's own task waits on ``receive()`` for
  ``http.disconnect``, which uvicorn also returns once the response is complete.
- The ``: ping`` comment every ``PING_SECONDS``, and the end of every stream when the
  server stops (uvicorn waits for open responses before it shuts the app down): one
  task per process and event loop (``_Keeper``), not one per stream.
- A client that stops reading: the hub's reaper cancels the sender whose send waited
  ``TASKCAST_SLOW_CLIENT_TIMEOUT``, and counts it; the stream then ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import signal
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import orjson
from sse_starlette import ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from taskcast.api.connection import CLOSE_TIMEOUT, Connection
from taskcast.api.errors import ApiError
from taskcast.api.guards import (
    CHALLENGE,
    Guard,
    app_state,
    guarded,
    may_watch,
    parse_owner,
    watch_refused,
)
from taskcast.api.validation import parse_task_id
from taskcast.live import protocol
from taskcast.live.protocol import Update
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
# A feed event's id: a time on Redis's clock in ms (15 digits last until the year 33658).
_FEED_ID = re.compile(r"[0-9]{1,15}")
# The ``at`` at the head of a feed message, as ``protocol.feed_snapshot`` writes it (an
# owner holds no quote): the feed event's id, read without parsing its tasks.
_FEED_AT = re.compile(r'\{"type":"feed","feed":"[^"]*","at":([0-9]+)[,}]')

# What EventSourceResponse sent, in its order.
_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
_START: Message = {"type": "http.response.start", "status": 200, "headers": _HEADERS}
# The ASGI messages every stream sends alike, made once. A message is never changed on
# its way out (Starlette's send wrappers and uvicorn only read it), so one serves all.
_RETRY: Message = {
    "type": "http.response.body",
    "body": ServerSentEvent(comment="taskcast", retry=RETRY_MS).encode(),
    "more_body": True,
}
_PING: Message = {
    "type": "http.response.body",
    "body": ServerSentEvent(comment="ping").encode(),
    "more_body": True,
}
_ENDED: Message = {"type": "http.response.body", "body": _END, "more_body": False}
_CLOSED: Message = {"type": "http.response.body", "body": b"", "more_body": False}
# How often the keeper looks for a stopping server.
_TICK = 0.2
# Streams pinged before the keeper lets others run.
_PING_BATCH = 500

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Watched:
    """A task or group a stream follows, with the token that opens it."""

    kind: str  # "task" or "group"
    id: str
    token: str | None


@functools.lru_cache(maxsize=64)
def _event(update: Update, event_id: str, ends: bool) -> Message:
    """One update as the ASGI message that writes its event (with the end event, and the
    end of the response, when it is the stream's last). Cached: the hub hands an update
    to every stream of its task in a row, and each that has seen the same states writes
    the same event, framed once (a few recent ones are kept, not one per watched task)."""
    event = ServerSentEvent(update.text, event=update.type, id=event_id).encode()
    if ends:
        return {"type": "http.response.body", "body": event + _END, "more_body": False}
    return {"type": "http.response.body", "body": event, "more_body": True}


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


class EventStream(Connection):
    """One stream's events: a connection of the hub whose updates are written as events,
    by the hub's own call while the socket has room (see the module's docstring). An
    update that would wait is finished by the connection's sender, the updates after it
    wait in its mailbox (the newest per task), and the hub's reaper cancels the sender
    if its client stops reading: the same rules as a WebSocket's."""

    __slots__ = (
        "_finished",
        "_receive",
        "_send_asgi",
        "members",
        "open",
        "ping_at",
        "refused",
        "seen",
        "watched",
    )

    def __init__(
        self,
        state: AppState,
        client: str,
        watched: list[Watched],
        seen: dict[str, str],
        members: dict[str, tuple[str, ...] | None],
        refused: set[str],
    ) -> None:
        super().__init__(state, client)
        self.watched = watched
        self.seen = seen
        self.members = members
        self.refused = refused
        self.open = {item.id for item in watched}
        self._receive: Receive | None = None
        self._send_asgi: Send | None = None
        # Whether the response is complete (its last message is written or on its way).
        self._finished = False
        # Loop time of the stream's next keep-alive comment (kept by the _Keeper).
        self.ping_at = 0.0

    def __repr__(self) -> str:
        return f"<EventStream of {len(self.watched)} ({len(self.open)} open) from {self.client}>"

    def _event_id(self) -> str:
        return ".".join(
            f"{item.id[:_ID_PREFIX]}{self.seen[item.id]}"
            for item in self.watched
            if item.id in self.seen
        )

    def _message(self, update: Update) -> Message | None:
        """The message that writes this update to the client; None for none."""
        watched_id = update.watched_id
        if watched_id is None or watched_id not in self.open:
            return None  # an answer to nothing this stream asked (there is no client request)
        if update.kind.terminal:
            self.open.discard(watched_id)
        ends = not self.open
        if ends:
            self._finished = True
        version = update.version
        if self.seen.get(watched_id) == version:
            # The client has this state already.
            return _ENDED if ends else None
        self.seen[watched_id] = version
        if len(self.watched) == 1:
            event_id = f"{watched_id[:_ID_PREFIX]}{version}"
        else:
            event_id = self._event_id()
        return _event(update, event_id, ends)

    async def write(self, update: Update) -> None:
        """The hub calls it for each update (and drives it without awaiting: see
        ``Subscriber``); it suspends only while the socket's buffer is full."""
        message = self._message(update)
        if message is not None:
            assert self._send_asgi is not None
            await self._send_asgi(message)

    def attach(self, receive: Receive, send: Send) -> None:
        """The response's channels, once it has started."""
        self._receive, self._send_asgi = receive, send

    async def finish(self) -> None:
        """After the stream ended: unless its end event went out, it was interrupted, by
        the server stopping, so that the client reconnects (to this service started
        again, or to another instance) and resumes; or by the sender's end. Not with the
        end event: its tasks have not ended. A client that does not read even this is
        dropped (the response is left unfinished, and reset), as a WebSocket's close
        frame is given up on."""
        if self._finished:
            return
        self._finished = True
        assert self._send_asgi is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._send_asgi(_CLOSED)

    def receive_client(self) -> Awaitable[Message]:
        # The request (a GET: no body) was read before the stream started; uvicorn's
        # next answer is http.disconnect, when the client leaves or once the response is
        # complete (the end event is its last message).
        assert self._receive is not None
        return self._receive()

    def ping(self) -> None:
        """Write a keep-alive comment if the socket has room; never wait for it (a
        stream whose send waits has bytes on their way already)."""
        if self._finished or self.sending_since is not None:
            return
        assert self._send_asgi is not None
        send = cast(Coroutine[Any, Any, None], self._send_asgi(_PING))
        try:
            send.send(None)
        except StopIteration:
            return
        except Exception:  # the client is gone: the stream ends
            self.interrupt()
            return
        send.close()  # the buffer is full: no ping needed

    def on_connect(self) -> None:
        hub = self.state.hub
        for item in self.watched:
            if item.id in self.refused:
                ids = {f"{item.kind}_id": item.id}
                self.offer(protocol.unauthorized(item.id, watch_refused(item.kind), **ids))
            elif item.kind == "task":
                hub.watch(item.id, self)
            elif (members := self.members[item.id]) is None:
                self.offer(protocol.unknown_group(item.id))
            else:
                hub.watch_group(item.id, members, self)


class FeedStream(EventStream):
    """An owner's feed as an event stream: the hub's feed message, then every status of
    the owner's tasks, each with the time (Redis's clock, ms) it was written as its id,
    so that a client coming back resumes from there. It never ends by itself: a feed has
    no final (a task's final status is one event among others)."""

    __slots__ = ("_last_ms", "owner", "since_ms")

    def __init__(self, state: AppState, client: str, owner: str, since_ms: int | None) -> None:
        super().__init__(state, client, [], {}, {}, set())
        self.owner = owner
        self.since_ms = since_ms
        # The last id written: ids never go back, though Redis's clock is read again now
        # and then (the offset may move by a few ms) and a failover brings another clock.
        # (Not seeded with since_ms: the client's word, where the feed event's is Redis's.)
        self._last_ms = 0

    def __repr__(self) -> str:
        return f"<FeedStream of {self.owner!r} from {self.client}>"

    def _message(self, update: Update) -> Message | None:
        if update.watched_id is None:
            return None  # an answer to nothing this stream asked (there is no client request)
        if update.type == "feed":
            found = _FEED_AT.match(update.text)
            written = int(found.group(1)) if found else self.state.hub.store.clock.now_ms()
        elif update.type == "status":
            # Never earlier than the record it shows: the hub read it before this write.
            written = self.state.hub.store.clock.now_ms()
        else:
            return None  # (the hub hands a feed nothing else)
        self._last_ms = max(self._last_ms, written)
        return _event(update, str(self._last_ms), False)

    def on_connect(self) -> None:
        self.state.hub.watch_feed(self.owner, self, self.since_ms)


def _server_stopping() -> bool:
    """Whether the server is shutting down, as sse-starlette tells it: its ``AppStatus``
    (set by the handler it installs on uvicorn's ``Server.handle_exit``, so by SIGTERM or
    SIGINT), or the ``should_exit`` of the uvicorn server whose handler SIGTERM calls
    (a server told to stop by code, as tests and embedding programs do)."""
    if AppStatus.should_exit:
        return True
    if not AppStatus.enable_automatic_graceful_drain:
        return False
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


class _Keeper:
    """The open streams of one event loop, for what is done to all of them on a clock:
    a ``: ping`` comment to each every ``PING_SECONDS`` (at its own time, counted from
    its start, so that the pings of 10,000 streams are spread out), and their end when
    the server stops. One task for the loop, running while any stream is open: where
    sse-starlette ran two per stream (a ping loop, a shutdown watcher)."""

    # (Removed by its task when it ends: a keeper refers to its loop.)
    _by_loop: ClassVar[dict[asyncio.AbstractEventLoop, _Keeper]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # In the order of their next ping: a pinged stream moves to the end.
        self.streams: dict[EventStream, None] = {}
        self.task = loop.create_task(self._run(), name="taskcast-sse-keeper")

    @classmethod
    def of_this_loop(cls) -> _Keeper:
        loop = asyncio.get_running_loop()
        keeper = cls._by_loop.get(loop)
        if keeper is None:
            keeper = cls._by_loop[loop] = cls(loop)
        return keeper

    def add(self, stream: EventStream) -> None:
        stream.ping_at = self.loop.time() + PING_SECONDS
        self.streams[stream] = None

    def discard(self, stream: EventStream) -> None:
        self.streams.pop(stream, None)

    async def _run(self) -> None:
        try:
            while self.streams:
                await asyncio.sleep(_TICK)
                if _server_stopping():
                    for stream in list(self.streams):
                        stream.interrupt()
                    continue
                await self._ping()
        finally:
            if self._by_loop.get(self.loop) is self:
                del self._by_loop[self.loop]

    async def _ping(self) -> None:
        now = self.loop.time()
        due = []
        for stream in self.streams:
            if stream.ping_at > now:
                break
            due.append(stream)
        for i, stream in enumerate(due, 1):
            if stream not in self.streams:
                continue  # ended meanwhile
            stream.ping()
            # To the end of the line, due again in PING_SECONDS.
            del self.streams[stream]
            self.streams[stream] = None
            stream.ping_at = now + PING_SECONDS
            if i % _PING_BATCH == 0:
                await asyncio.sleep(0)


class _Response(Response):
    """The event stream, holding one of the client's connections while it lasts."""

    def __init__(self, stream: EventStream) -> None:
        # (Not Response.__init__: there is no body to render, nor its length to say.)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        try:
            await send(_START)
            if scope["method"] == "HEAD":
                # The headers alone: a stream would never end.
                await send(_CLOSED)
                return
            await send(_RETRY)
            # The request itself, whole at once (a GET has no body).
            await receive()
            stream.attach(receive, send)
            # Until its end event, the client leaving, the client no longer reading, or
            # the server stopping. (Served from here, not from a method of the stream's:
            # a coroutine frame fewer held by every idle stream.)
            keeper = _Keeper.of_this_loop()
            keeper.add(stream)
            try:
                await stream.serve()
            finally:
                keeper.discard(stream)
            await stream.finish()
        finally:
            stream.release()


async def _open(request: Request, watched: list[Watched], many: bool = False) -> Response:
    """The stream of ``watched``. On ``/sse`` (``many``) an id whose token does not open
    it is refused alone, with an ``unauthorized`` error event, as ``/ws`` refuses one
    subscribe (an EventSource cannot read the body of a 401); a stream that opens no id at
    all is a 401."""
    state = app_state(request)
    refused = {item.id for item in watched if not may_watch(request, item.id, item.token)}
    if refused and (not many or len(refused) == len(watched)):
        first = next(item for item in watched if item.id in refused)
        detail = f"{first.kind} {first.id}: {watch_refused(first.kind)}"
        raise ApiError(401, "unauthorized", detail, CHALLENGE)
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
    seen = seen_versions(last_event_id, watched)
    stream = EventStream(state, client, watched, seen, members, refused)
    too_many = stream.admit()
    if too_many is not None:
        raise ApiError(503, "too_many_connections", too_many.detail, {"Retry-After": "5"})
    return _Response(stream)


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


def parse_feed_resume(last_event_id: str | None) -> int | None:
    """The time a feed's stream resumes from: the id of its last event the client had
    (a time in ms); None for a first connection. Anything else is refused (400): the
    ids of this stream are the only ones it takes."""
    if not last_event_id:
        return None
    if _FEED_ID.fullmatch(last_event_id) is None:
        shown = last_event_id if len(last_event_id) <= 64 else last_event_id[:64] + "..."
        raise ApiError(
            400,
            "invalid_last_event_id",
            "a feed's stream resumes from the id of one of its events (a time in ms), "
            f"got {shown!r}",
        )
    return int(last_event_id)


async def sse_feed(request: Request) -> Response:
    # The guard has checked the owner (422) and its feed token or an API key (401).
    owner = parse_owner(request.path_params["owner"])
    extra = set(request.query_params) - {"token", "last_event_id"}
    if extra:
        raise ApiError(400, "invalid_query", f"unexpected query parameter {sorted(extra)[0]!r}")
    since_ms = parse_feed_resume(
        request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    )
    state = app_state(request)
    client = request.client.host if request.client else ""
    stream = FeedStream(state, client, owner, since_ms)
    too_many = stream.admit()
    if too_many is not None:
        raise ApiError(503, "too_many_connections", too_many.detail, {"Retry-After": "5"})
    return _Response(stream)


async def sse_many(request: Request) -> Response:
    limit = app_state(request).settings.max_subscriptions
    return await _open(request, parse_watched(request.query_params.multi_items(), limit), many=True)


routes = [
    guarded("/sse", sse_many, guard=Guard.WATCH_EACH),
    guarded("/sse/tasks/{task_id}", sse_task, guard=Guard.WATCH),
    guarded("/sse/groups/{group_id}", sse_group, guard=Guard.WATCH),
    guarded("/sse/feeds/{owner}", sse_feed, guard=Guard.FEED),
]
