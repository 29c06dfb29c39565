"""Load generators: many WebSocket or Server-Sent Events clients, or HTTP pollers, in
processes of their own.

A benchmark client must cost far less than the server it measures, or it measures
itself. So each socket is the ``websockets`` library's sans-I/O client protocol on a
bare asyncio transport: no task, no queue, just frame parsing and a counter. An event
stream (an ``http://`` URL: ``/sse/...``) is as bare: one HTTP/1.1 GET on an asyncio
transport, its chunked body taken apart with ``bytes.find``, its events split on blank
lines and only their ``event:`` and ``data:`` fields looked at. Clients do not decode
messages; they note when the k-th message (WebSocket text frame, or ``status`` event) of
every socket has arrived, and the process reports the first and last arrival of each k
to the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import WebSocketURI, parse_uri

# The events an event stream counts, as WebSocket clients count text frames.
_COUNTED = b"status"

# Sockets a process opens at once: enough to connect thousands quickly, few enough
# not to overflow the server's listen backlog.
_CONNECTING = 64

_context = multiprocessing.get_context("spawn")


class _Tally:
    """When the k-th frame reached each socket of this process; reports each full k."""

    def __init__(self, sockets: int, report: Connection, server_closes: bool) -> None:
        self.sockets = sockets
        self.report = report
        self.arrivals: dict[int, list[float]] = {}  # k -> [count, first, last]
        self.closing = False
        # Whether the server is expected to end the sockets (when their task ends): then
        # each close is counted by its code instead of being an error.
        self.server_closes = server_closes
        # WebSocket close codes; "end" for an event stream that ended with an ``end``
        # event and the response's last chunk, None for one cut off.
        self.close_codes: Counter[int | str | None] = Counter()
        self.frames = 0

    def received(self, k: int) -> None:
        now = time.time()
        entry = self.arrivals.get(k)
        if entry is None:
            entry = self.arrivals[k] = [0, now, now]
        entry[0] += 1
        entry[2] = now
        if entry[0] == self.sockets:
            del self.arrivals[k]
            self.report.send(("frame", k, entry[1], entry[2]))

    def closed(self, code: int | str | None, frames: int, why: str) -> None:
        if not self.server_closes:
            self.failed(why)
            return
        self.close_codes[code] += 1
        self.frames += frames
        if self.close_codes.total() == self.sockets:
            self.report.send(("closed", dict(self.close_codes), self.frames))

    def failed(self, why: str) -> None:
        if not self.closing:
            self.closing = True
            self.report.send(("error", why))


class WebSocketClient(asyncio.Protocol):
    """A bare sans-I/O WebSocket client on an asyncio transport (no task per socket):
    it opens the handshake, sends ``sends`` once it is accepted, and hands each text
    frame to ``text``; subclasses say what a frame and a refusal mean."""

    def __init__(self, uri: WebSocketURI, sends: Sequence[str]) -> None:
        self.protocol = ClientProtocol(uri, max_size=None)
        self.sends = sends
        self.transport: asyncio.Transport | None = None

    def text(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """A text frame arrived at ``now`` (the parser's buffer: copy what is kept)."""

    def opened(self) -> None:
        """The handshake was accepted; the subscribes go out next."""

    def refused(self, status_code: int) -> None:
        """The handshake was answered with another status than 101."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        now = time.time()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.text(event.data, now)
            elif isinstance(event, Response) and event.status_code != 101:
                self.refused(event.status_code)
            elif isinstance(event, Response):
                self.opened()
                for text in self.sends:
                    self.protocol.send_text(text.encode())
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()


class _Socket(WebSocketClient):
    """One WebSocket client that counts the text frames it receives."""

    def __init__(self, uri: WebSocketURI, tally: _Tally, sends: Sequence[str]) -> None:
        super().__init__(uri, sends)
        self.tally = tally
        self.frames = 0

    def text(self, data: bytes | bytearray | memoryview, now: float) -> None:
        self.frames += 1
        self.tally.received(self.frames)

    def refused(self, status_code: int) -> None:
        self.tally.failed(f"handshake refused: HTTP {status_code}")

    def connection_lost(self, exc: Exception | None) -> None:
        # The code the server sent (the protocol's close_code waits for a state this
        # bare transport never reports).
        received = self.protocol.close_rcvd
        code = received.code if received is not None else None
        self.tally.closed(code, self.frames, f"a socket closed early (code {code}, {exc!r})")


class _EventStream(asyncio.Protocol):
    """One Server-Sent Events client (HTTP/1.1 GET) that counts the ``status`` events it
    receives. Minimal by design: a ``200`` with a chunked or a plain body, fields split
    on ``\n`` or ``\r\n`` (not on a lone ``\r``), no decoding of the data."""

    def __init__(self, host: str, port: int, target: str, tally: _Tally) -> None:
        self.request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        self.tally = tally
        self.frames = 0
        self.head = True
        self.chunked = False
        self.raw = b""  # received, not yet taken apart (the head, or part of a chunk)
        self.text = b""  # the body, after the last complete event
        self.ended = False  # an ``end`` event came
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.raw:
            data = self.raw + data
            self.raw = b""
        if self.head:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.raw = data
                return
            head = data[:end].lower()
            if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                self.tally.failed(f"stream refused: {status}")
                assert self.transport is not None
                self.transport.abort()
                return
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            self.head = False
            data = data[end + 4 :]
        if not self.chunked:
            self._events(data)
            return
        # Chunks: "<size in hex>\r\n<size bytes>\r\n"; one per event, as a rule.
        position, size_of = 0, len(data)
        while position < size_of:
            eol = data.find(b"\r\n", position)
            if eol < 0:
                break
            size = int(data[position:eol].split(b";", 1)[0], 16)
            end = eol + 2 + size
            if end + 2 > size_of:
                break
            if size == 0:  # the last chunk: the response is over, as a browser closes
                assert self.transport is not None
                self.transport.close()
                return
            self._events(data[eol + 2 : end])
            position = end + 2
        if position < size_of:
            self.raw = data[position:]

    def _events(self, body: bytes) -> None:
        text = self.text + body if self.text else body
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n")
        blocks = text.split(b"\n\n")
        self.text = blocks.pop()  # the part after the last blank line: not an event yet
        for block in blocks:
            kind = b"message"
            data = False
            for line in block.split(b"\n"):
                if line.startswith(b"data"):
                    data = data or len(line) == 4 or line[4] == 58  # "data" or "data:..."
                elif line.startswith(b"event:"):
                    kind = line[7:] if line[6:7] == b" " else line[6:]
            if not data:
                continue  # a comment (": ping"), the retry field, an empty event
            if kind == _COUNTED:
                self.frames += 1
                self.tally.received(self.frames)
            elif kind == b"end":
                self.ended = True

    def connection_lost(self, exc: Exception | None) -> None:
        code = "end" if self.ended else None
        self.tally.closed(code, self.frames, f"a stream closed early ({exc!r})")


async def _run_sockets(
    report: Connection, urls: Sequence[str], server_closes: bool, sends: Sequence[str]
) -> None:
    loop = asyncio.get_running_loop()
    tally = _Tally(len(urls), report, server_closes)
    stop = asyncio.Event()
    # Any word from the driver means stop.
    loop.add_reader(report.fileno(), stop.set)
    gate = asyncio.Semaphore(_CONNECTING)
    transports: list[asyncio.BaseTransport] = []

    async def open_one(url: str) -> None:
        factory: Callable[[], asyncio.Protocol]
        if url.startswith("http://"):
            address = urllib.parse.urlsplit(url)
            host, port = address.hostname or "", address.port or 80
            target = address.path + (f"?{address.query}" if address.query else "")
            factory = functools.partial(_EventStream, host, port, target, tally)
        else:
            uri = parse_uri(url)
            host, port = uri.host, uri.port
            factory = functools.partial(_Socket, uri, tally, sends)
        async with gate:
            transport, _ = await loop.create_connection(factory, host, port)
        transports.append(transport)

    try:
        await asyncio.gather(*(open_one(url) for url in urls))
    except OSError as exc:
        tally.failed(f"cannot connect: {exc!r}")
    await stop.wait()
    tally.closing = True
    for transport in transports:
        transport.abort()


def _sockets_main(
    report: Connection, urls: Sequence[str], server_closes: bool, sends: Sequence[str]
) -> None:
    asyncio.run(_run_sockets(report, urls, server_closes, sends))


def stop_children(pipes: Sequence[Connection], processes: Sequence[Any]) -> None:
    """Tell each client process to stop, and wait for it (killed after 10 s)."""
    for pipe in pipes:
        with contextlib.suppress(OSError):
            pipe.send("stop")
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


class Sockets:
    """WebSocket clients (``ws://`` URLs) or Server-Sent Events clients (``http://``) to
    ``urls``, spread over ``processes`` processes.

    Every socket's first frame (the snapshot, or the baseline's greeting) means it is
    connected and subscribed; the context manager returns once all of them have it.
    For an event stream a "frame" is a ``status`` event.
    With ``server_closes``, the server ending a socket is expected (see ``closed``).
    Each WebSocket sends the text frames ``sends`` (subscribes on ``/ws``) once connected.
    """

    def __init__(
        self,
        urls: Sequence[str],
        processes: int = 2,
        timeout: float = 120.0,
        server_closes: bool = False,
        sends: Sequence[str] = (),
    ) -> None:
        self.shares = [list(urls[i::processes]) for i in range(processes) if urls[i::processes]]
        self.timeout = timeout
        self.server_closes = server_closes
        self.sends = list(sends)
        self.pipes: list[Connection] = []
        # The highest k each process has reported every one of its sockets reaching.
        self.reached: dict[Connection, int] = {}
        self.processes: list[Any] = []

    def __enter__(self) -> Sockets:
        for share in self.shares:
            here, there = _context.Pipe()
            args = (there, share, self.server_closes, self.sends)
            process = _context.Process(target=_sockets_main, args=args, daemon=True)
            process.start()
            self.pipes.append(here)
            self.processes.append(process)
        self.frame(1, self.timeout)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stop_children(self.pipes, self.processes)

    def frame(self, k: int, timeout: float = 60.0) -> tuple[float, float]:
        """Wait until every socket has its k-th frame; the first and last arrival times."""
        reports = self._one_each(
            lambda message: message[0] == "frame" and message[1] == k,
            timeout,
            f"frame {k} did not reach every socket within {timeout} s",
        )
        return min(report[2] for report in reports), max(report[3] for report in reports)

    def closed(self, timeout: float) -> tuple[Counter[int | str | None], int]:
        """Wait until the server has closed every socket: the close codes (``"end"`` for a
        stream that ended with its ``end`` event), and frames seen."""
        reports = self._one_each(
            lambda message: message[0] == "closed",
            timeout,
            f"sockets still open after {timeout} s",
        )
        codes: Counter[int | str | None] = Counter()
        for report in reports:
            codes.update(report[1])
        return codes, sum(report[2] for report in reports)

    def frames_within(self, seconds: float) -> int:
        """Read the clients' reports for ``seconds`` (so that none waits on a full pipe);
        how many frames every socket has had by then."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for pipe in multiprocessing.connection.wait(self.pipes, timeout=left):
                assert isinstance(pipe, Connection)
                self._note(pipe, pipe.recv())
        return min(self.reached.get(pipe, 0) for pipe in self.pipes)

    def _note(self, pipe: Connection, message: tuple[Any, ...]) -> None:
        """Take in a client process's report; its error is raised."""
        if message[0] == "error":
            raise RuntimeError(message[1])
        if message[0] == "frame":
            self.reached[pipe] = max(self.reached.get(pipe, 0), message[1])

    def _one_each(
        self, wanted: Callable[[tuple[Any, ...]], bool], timeout: float, late: str
    ) -> list[tuple[Any, ...]]:
        """The first ``wanted`` report of every process; a client's error is raised."""
        deadline = time.monotonic() + timeout
        reports = []
        waiting = list(self.pipes)
        while waiting:
            ready = multiprocessing.connection.wait(
                waiting, timeout=max(deadline - time.monotonic(), 0)
            )
            if not ready:
                raise TimeoutError(late)
            for pipe in ready:
                assert isinstance(pipe, Connection)
                message = pipe.recv()
                self._note(pipe, message)
                if wanted(message):
                    reports.append(message)
                    waiting.remove(pipe)
        return reports


async def _run_pollers(
    report: Connection, address: str, paths: Sequence[str], period: float, duration: float
) -> None:
    loop = asyncio.get_running_loop()
    host, port = address.rsplit(":", 1)
    streams = [await asyncio.open_connection(host, int(port)) for _ in paths]
    report.send(("ready",))
    go = asyncio.Event()
    loop.add_reader(report.fileno(), go.set)
    await go.wait()
    loop.remove_reader(report.fileno())
    report.recv()
    start = loop.time()
    deadline = start + duration
    done = failed = 0

    async def poll(i: int, path: str) -> None:
        nonlocal done, failed
        reader, writer = streams[i]
        request = f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode()
        # Spread over the period, as independent clients would be.
        due = start + period * i / len(paths)
        while due < deadline:
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            done += 1
            if not head.startswith(b"HTTP/1.1 200"):
                failed += 1
            due += period

    await asyncio.gather(*(poll(i, path) for i, path in enumerate(paths)))
    report.send(("polled", done, failed, loop.time() - start))
    for _, writer in streams:
        writer.close()


def _pollers_main(
    report: Connection, address: str, paths: Sequence[str], period: float, duration: float
) -> None:
    asyncio.run(_run_pollers(report, address, paths, period, duration))


class Pollers:
    """HTTP clients, each requesting its path once per ``period`` on a kept-alive connection."""

    def __init__(
        self,
        address: str,
        paths: Sequence[str],
        period: float,
        duration: float,
        processes: int = 2,
    ) -> None:
        self.processes = []
        self.pipes: list[Connection] = []
        for i in range(processes):
            share = list(paths[i::processes])
            if not share:
                continue
            here, there = _context.Pipe()
            args = (there, address, share, period, duration)
            self.processes.append(_context.Process(target=_pollers_main, args=args, daemon=True))
            self.pipes.append(here)

    def run(self, on_start: Any = None) -> tuple[int, int, float]:
        """Connect, then poll for the duration; requests done, failed, and seconds taken."""
        for process in self.processes:
            process.start()
        for pipe in self.pipes:
            if pipe.recv()[0] != "ready":
                raise RuntimeError("a poller did not connect")
        if on_start is not None:
            on_start()
        for pipe in self.pipes:
            pipe.send("go")
        done = failed = 0
        took = 0.0
        for pipe in self.pipes:
            _, d, f, t = pipe.recv()
            done, failed, took = done + d, failed + f, max(took, t)
        for process in self.processes:
            process.join(10)
        return done, failed, took
