"""The HTTP protocol uvicorn runs for taskcast: uvicorn's httptools one, with what it
lacks against clients that hold connections without using them.

Every connection the process accepts costs a file descriptor, from its accept on,
whatever it sends; uvicorn limits none of that. Here:

- **A cap on connections** (``TASKCAST_MAX_CONNECTIONS``), counting every connection
  the server holds (uvicorn's ``server_state.connections``: HTTP and WebSocket alike),
  from its accept, before its request line. A connection that has not sent a complete
  request head (new, or idle between requests) has not earned its descriptor: when the
  cap is reached, a newcomer takes the place of the one that has waited longest;
  only when every connection is in use is the newcomer refused, at once, with a 503.
- **A deadline for a request's head** (``TASKCAST_HEADER_TIMEOUT``), from the moment
  the connection waits for a request: accepted, or its previous response complete
  (uvicorn's own ``timeout_keep_alive`` closes an idle one sooner, but not one that
  trickles a byte at a time).
- **A bound on a request's head** (``TASKCAST_MAX_HEADER_BYTES``): httptools buffers a
  header of any size, so no more than that is handed to it; over it, 431.
- **Clients that stop reading a response** (an event stream above all), judged as a
  WebSocket's keepalive judges its client: bytes waiting for the client, none of them
  acknowledged for ``TASKCAST_SLOW_CLIENT_TIMEOUT``. Read from the kernel (Linux's
  ``TCP_INFO``) by one timer per server, never one per stream. Such a connection is
  reset, which releases its descriptor and the kernel's queue at once; the app hears
  ``http.disconnect``.
- **A response left unfinished** by its app is reset too, where uvicorn closes it:
  ``close()`` waits for the client to read what is buffered, for ever if it never does.

What is refused or closed is counted in the app's metrics, which its lifespan puts in
the lifespan state (``taskcast.metrics.LIFESPAN_KEY``), where the protocol finds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import socket
import struct
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from taskcast.metrics import LIFESPAN_KEY, Metrics

if TYPE_CHECKING:
    from uvicorn.server import Protocols  # (defined for type checkers only)

# How often, per slow-client timeout, the server looks at its responses in progress: a
# client that stopped reading is judged between one and 1.2 timeouts after. Each look
# costs about 5 us a connection; it lets other work run every _LOOK_BATCH of them.
_LOOKS_PER_TIMEOUT = 5
_LOOK_BATCH = 500
# What a refused client is told to wait before it tries again, in seconds.
_RETRY_AFTER = 5

# ``struct tcp_info`` (linux/tcp.h), as far as the fields read (Linux 4.6 and later):
# tcpi_unacked (segments sent and not acknowledged) at 24, tcpi_bytes_acked at 120,
# tcpi_notsent_bytes (queued, not sent yet) at 144.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_PROGRESS = struct.Struct("=24xI92xQ16xI")
# SO_LINGER on, for no time: close() resets the connection and drops what it queued.
_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What the protocol enforces, read once from the settings (``Settings.uvicorn_options``)."""

    # Connections the server may hold, of every kind (0: no cap).
    max_connections: int
    # Seconds a connection has to send a request's complete head.
    header_timeout: float
    # Largest request head (request line and headers), in bytes.
    max_header_bytes: int
    # Seconds a client may leave bytes of a response unacknowledged.
    slow_client_timeout: float


def http_protocol(limits: ConnectionLimits) -> Callable[..., TaskcastHttpProtocol]:
    """The ``http`` option for uvicorn: the protocol class with ``limits`` (a partial of
    plain values, which uvicorn can pickle for its worker processes)."""
    return functools.partial(TaskcastHttpProtocol, limits=limits)


class _Guard:
    """What the connections of one server share: those waiting for a request's head,
    with the one timer of their deadlines, and the one timer that looks at responses in
    progress for clients that stopped reading."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limits: ConnectionLimits,
        server_state: ServerState,
        app: ASGI3Application,
        app_state: dict[str, Any],
    ) -> None:
        self.loop = loop
        self.limits = limits
        # The server's own set, not the ServerState: this guard is kept in a weak
        # dictionary under that one, which it must not keep alive.
        self.connections = server_state.connections
        self.app_state = app_state
        self.app = app
        # Connections waiting for a request's head, by loop time since then: in that
        # order too (a dict keeps the order of insertion), so the longest waiting is
        # the first, whose deadline is the next to come.
        self.waiting: dict[TaskcastHttpProtocol, float] = {}
        self._deadline: asyncio.TimerHandle | None = None
        # The next look (or batch of one); the connections a look has still to judge,
        # and when it began.
        self._probe: asyncio.Handle | None = None
        self._sweep: Iterator[Protocols] | None = None
        self._swept_at = 0.0

    def count(self, limit: str) -> None:
        """Count a connection refused or closed by ``limit`` in the app's metrics."""
        metrics = self.app_state.get(LIFESPAN_KEY)
        if isinstance(metrics, Metrics):
            metrics.connections_refused[limit].inc()

    def count_slow_client(self) -> None:
        """Count a client reset because it stopped reading, as the hub counts its own."""
        metrics = self.app_state.get(LIFESPAN_KEY)
        if isinstance(metrics, Metrics):
            metrics.slow_clients_closed.inc()

    def admit(self, newcomer: TaskcastHttpProtocol) -> bool:
        """Whether ``newcomer`` (counted already) may stay: under the cap, or in the place
        of the connection that has waited longest for a request's head."""
        cap = self.limits.max_connections
        if not cap or len(self.connections) <= cap:
            return True
        if not self.waiting:
            return False
        oldest = next(iter(self.waiting))
        self.waiting.pop(oldest)
        # Out of the count now, not when the loop reports it lost: the newcomers of
        # this same turn of the loop must not count it again.
        self.connections.discard(oldest)
        oldest.reset()
        self.count("connections_evicted")
        return True

    def wait(self, connection: TaskcastHttpProtocol) -> None:
        """``connection`` waits for a request's head from now on."""
        self.waiting.pop(connection, None)
        self.waiting[connection] = self.loop.time()
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.header_timeout, self._expire)

    def stop_waiting(self, connection: TaskcastHttpProtocol) -> None:
        """``connection`` has a request's head, or is gone."""
        self.waiting.pop(connection, None)

    def _expire(self) -> None:
        """Close the connections whose head is late; then wait for the next deadline."""
        self._deadline = None
        due = self.loop.time() - self.limits.header_timeout
        while self.waiting:
            connection, since = next(iter(self.waiting.items()))
            if since > due:
                self._deadline = self.loop.call_at(since + self.limits.header_timeout, self._expire)
                return
            del self.waiting[connection]
            connection.reset()
            self.count("header_timeout")

    def probe_soon(self) -> None:
        """Look at the server's responses in progress on a clock, while it has
        connections."""
        if self._probe is None and self._sweep is None:
            interval = self.limits.slow_client_timeout / _LOOKS_PER_TIMEOUT
            self._probe = self.loop.call_later(interval, self._look)

    def _look(self) -> None:
        """Judge the next batch of connections; then the next batch at once, or, all
        judged, the next look after an interval."""
        self._probe = None
        if self._sweep is None:
            self._swept_at = self.loop.time()
            self._sweep = iter(list(self.connections))
        judged = 0
        try:
            for connection in itertools.islice(self._sweep, _LOOK_BATCH):
                judged += 1
                if (
                    isinstance(connection, TaskcastHttpProtocol)
                    and connection in self.connections  # not gone since the look began
                    and connection.stopped_reading(self._swept_at)
                ):
                    connection.reset()
                    self.count_slow_client()
        finally:
            # (Even after a failure, which the loop reports: the clock goes on.)
            if judged == _LOOK_BATCH:
                self._probe = self.loop.call_soon(self._look)
            else:
                self._sweep = None
                if self.connections:
                    self.probe_soon()


# One guard per uvicorn server (tests run several in a process); gone with its server.
_guards: weakref.WeakKeyDictionary[ServerState, _Guard] = weakref.WeakKeyDictionary()


def _reset_unfinished(cycle: RequestResponseCycle, _: object = None) -> None:
    """Reset the connection of a request whose app ended with its response unfinished.

    uvicorn closes such a connection with ``transport.close()``, which waits until the
    client has read whatever is still buffered: for ever from a client that stopped
    reading (a stream ended by the hub's slow-client reaper), holding its descriptor.
    The response is cut short either way; a reset cuts it now."""
    if cycle.response_started and not cycle.response_complete:
        _reset(cycle.transport)


def _reset(transport: asyncio.Transport) -> None:
    """Close at once with a reset: the descriptor, and the kernel's queues, are freed now,
    not after a client that does not read has read them."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # (Fails only on a socket closed already, which abort() leaves as it is.)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abort()


class TaskcastHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with taskcast's connection limits (see the module's
    docstring). uvicorn builds one per accepted connection; ``limits`` come bound in
    (``http_protocol``)."""

    __slots__ = ("_acked", "_guard", "_head_room", "_stuck_since")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        guard = _guards.get(server_state)
        if guard is None:
            guard = _Guard(self.loop, limits, server_state, self.app, app_state)
            _guards[server_state] = guard
        self._guard = guard
        self.app = guard.app
        # Bytes the request head being read may still take; None while a request's
        # head is complete and its body is read.
        self._head_room: int | None = limits.max_header_bytes
        # The client's acknowledged bytes when last looked at (-1: nothing owed to it),
        # and since when they have not moved while bytes wait for it.
        self._acked = -1
        self._stuck_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self._guard
        guard.probe_soon()
        if not guard.admit(self):
            self._refuse()
            return
        guard.wait(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.stop_waiting(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        room = self._head_room
        while room is not None and len(data) > room:
            # More than the head may still take: hand the parser only that much, and
            # see where the head stands after it.
            head, data = data[:room], data[room:]
            self._head_room = 0
            if head:
                super().data_received(head)
                if self._detached():
                    return
            room = self._head_room
            if room == 0:
                self._head_too_large()
                return
        if room is not None:
            self._head_room = room - len(data)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head_room = None
        self._guard.stop_waiting(self)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What comes next is the next request's head.
        self._head_room = self._guard.limits.max_header_bytes

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """uvicorn's, with the request's connection reset if its app ends leaving the
        response unfinished (``_reset_unfinished``): a callback on the request's task,
        not a wrapper around the app, whose coroutine every open stream would hold."""
        if self.config.reset_contextvars:
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(functools.partial(_reset_unfinished, cycle))
        self.tasks.add(task)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle again, unless closing or a pipelined request took over.
        if self.cycle.response_complete and not self.transport.is_closing():
            self._guard.wait(self)

    def reset(self) -> None:
        """Drop the connection now (see ``_reset``); the app, if a request is in
        progress, hears ``http.disconnect``."""
        self._guard.stop_waiting(self)
        _reset(self.transport)

    def stopped_reading(self, now: float) -> bool:
        """Whether bytes have waited for the client, with none of them acknowledged, for
        the slow-client timeout (the kernel's count, looked at now)."""
        cycle = self.cycle
        transport = self.transport
        buffered = transport.get_write_buffer_size()
        responding = cycle is not None and cycle.response_started and not cycle.response_complete
        if not buffered and not responding:
            self._acked = -1
            return False
        sample = _tcp_progress(transport)
        if sample is None:
            return False  # not TCP, or not Linux: left to the hub's reaper
        acked, unacknowledged = sample
        if acked != self._acked or not (unacknowledged or buffered):
            # Reading, or owed nothing right now.
            self._acked = acked
            self._stuck_since = now
            return False
        return now - self._stuck_since >= self._guard.limits.slow_client_timeout

    def _detached(self) -> bool:
        """Whether the connection is no longer this protocol's to parse: closed, or
        handed to the WebSocket protocol."""
        transport = self.transport
        return self.parser is None or transport.is_closing() or transport.get_protocol() is not self

    def _refuse(self) -> None:
        limit = self._guard.limits.max_connections
        detail = f"this server already has {limit} connections open; retry later"
        self._answer(503, "too_many_connections", detail, b"retry-after: %d\r\n" % _RETRY_AFTER)
        self._guard.count("connections_total")

    def _head_too_large(self) -> None:
        self._head_room = None
        self._guard.stop_waiting(self)
        self._guard.count("header_bytes")
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is on its way (the head is a pipelined request's): there is no
            # room for an answer of ours.
            self.reset()
            return
        limit = self._guard.limits.max_header_bytes
        detail = f"a request's line and headers may take at most {limit} bytes"
        self._answer(431, "headers_too_large", detail)

    def _answer(self, status: int, error: str, detail: str, extra: bytes = b"") -> None:
        """Answer outside any request (no app sees it) with taskcast's JSON error, and close."""
        body = orjson.dumps({"error": error, "detail": detail})
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            extra,
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()


def _tcp_progress(transport: asyncio.BaseTransport) -> tuple[int, bool] | None:
    """The bytes the client has acknowledged so far, and whether the kernel holds bytes
    for it (sent and not acknowledged, or not sent yet); None where the kernel does not
    tell (not Linux, not TCP)."""
    sock = transport.get_extra_info("socket")
    if sock is None or _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_PROGRESS.size)
    except OSError:
        return None
    if len(info) < _TCP_PROGRESS.size:
        return None
    unacked, acked, notsent = _TCP_PROGRESS.unpack_from(info)
    return acked, bool(unacked or notsent)
