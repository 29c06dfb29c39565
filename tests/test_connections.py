"""Connections that hold the process's descriptors without using them: silent ones, late
or huge request heads, responses nobody reads (taskcast.live.http_transport). Real uvicorn
servers, in this process and as ``taskcast serve`` under a small open-file limit, and
real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pickle
import shlex
import signal
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import psutil
import pytest
import redis

from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from taskcast.live.http_transport import ConnectionLimits, http_protocol
from taskcast_celery import keys
from tests import env
from tests.support import (
    ROOT,
    Reader,
    eventually,
    recv_json,
    running_server,
    settings_with,
    ws_connect,
)

# Linux's TCP states (include/net/tcp_states.h), as TCP_INFO's first byte says them.
ESTABLISHED = 1
CLOSED = 7

# The open-file limit `taskcast serve` runs under below, and the connections it is sent:
# what exhausted a service before its connections were capped.
OPEN_FILES = 512
SILENT = 600


def connect(base_url: str, receive_buffer: int | None = None) -> socket.socket:
    """A plain TCP connection to the server, sending nothing yet; ``receive_buffer``
    makes the window of a client that does not read close within kilobytes, instead of
    the megabytes loopback allows."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return sock


def tcp_state(sock: socket.socket) -> int:
    """The connection's state as the client's kernel sees it: ESTABLISHED until the
    server's reset or close reaches it."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def dropped(sock: socket.socket) -> bool:
    """Whether the server has ended the connection (reset it, or closed it with nothing
    more to say): what is left to read is read."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset
    return True


async def until_dropped(sock: socket.socket, within: float = 10.0) -> None:
    await eventually(lambda: dropped(sock), bool, within=within)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (blocking)."""
    sock.settimeout(10)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


async def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection, read off the loop
    (which may be the server's)."""
    return await asyncio.to_thread(read_until_closed, sock)


def head_of(size: int, path: str = "/healthz") -> bytes:
    """A request whose head (request line and headers) takes exactly ``size`` bytes."""
    start = f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Padding: ".encode()
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def limited(metrics: str, limit: str) -> float:
    """The value of ``taskcast_limited_total{limit=...}`` in a scrape."""
    prefix = f'taskcast_limited_total{{limit="{limit}"}} '
    line = next(line for line in metrics.splitlines() if line.startswith(prefix))
    return float(line.removeprefix(prefix))


def slow_clients_closed(metrics: str) -> float:
    prefix = "taskcast_slow_clients_closed_total "
    line = next(line for line in metrics.splitlines() if line.startswith(prefix))
    return float(line.removeprefix(prefix))


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    """A list of client sockets, every one closed at the end."""
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


# -- the cap on connections --------------------------------------------------------


@dataclass
class Service:
    """`taskcast serve` in a process of its own, under OPEN_FILES open files."""

    url: str
    process: psutil.Process


@pytest.fixture(scope="module")
async def service() -> AsyncIterator[Service]:
    """`taskcast serve` as in production (uvloop, its own process), under an open-file
    limit of OPEN_FILES (so a cap of OPEN_FILES - 256 connections), judging a client
    that stops reading after one second."""
    port = free_port()
    serve = [sys.executable, "-m", "taskcast", "serve", "--port", str(port)]
    command = f"ulimit -n {OPEN_FILES} && exec {shlex.join(serve)} --log-level warning"
    environ = {**os.environ, "TASKCAST_SLOW_CLIENT_TIMEOUT": "1"}
    child = await asyncio.create_subprocess_exec("sh", "-c", command, env=environ, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as http:

            async def healthy() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/healthz")).status_code == 200
                return False

            await eventually(healthy, bool, within=30)
        yield Service(url, psutil.Process(child.pid))
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            child.kill()
            await child.wait()


async def test_silent_connections_cannot_take_every_descriptor(service: Service) -> None:
    assert service.process.rlimit(psutil.RLIMIT_NOFILE)[0] == OPEN_FILES
    with sockets() as silent:
        # More connections than the process may open files, none sending a byte.
        for _ in range(SILENT):
            silent.append(connect(service.url))
        async with httpx.AsyncClient(base_url=service.url, timeout=5) as http:
            # Each newcomer takes the place of the oldest silent one: the service
            # answers all the same, on every front.
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            async with ws_connect(service.url, "/ws") as ws:
                await ws.send(json.dumps({"op": "ping"}))
                assert (await recv_json(ws))["type"] == "pong"
            dispatched = await http.post("/tasks/sleep", json={"seconds": 0})
            assert dispatched.status_code == 202, dispatched.text
            held = service.process.num_fds()
            scraped = (await http.get("/metrics")).text
        assert held < OPEN_FILES
        evicted = limited(scraped, "connections_evicted")
        assert evicted >= SILENT - (OPEN_FILES - 256)
        # The evicted were reset; the newest silent ones are held (until their deadline).
        await eventually(
            lambda: sum(tcp_state(s) == CLOSED for s in silent),
            lambda closed: closed >= evicted,
        )
        assert tcp_state(silent[-1]) == ESTABLISHED


async def test_a_newcomer_is_refused_at_once_when_every_connection_is_in_use() -> None:
    settings = settings_with(max_connections=4)
    app = create_app(settings=settings)
    async with (
        running_server(app, **settings.uvicorn_options()) as url,
        contextlib.AsyncExitStack() as stack,
    ):
        sockets_in_use = [await stack.enter_async_context(ws_connect(url, "/ws")) for _ in range(4)]
        with sockets() as newcomers:
            newcomers.append(connect(url))
            answer = await read_answer(newcomers[0])
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nretry-after: 5\r\n" in head.lower()
        assert json.loads(body)["error"] == "too_many_connections"
        await sockets_in_use.pop().close()
        async with httpx.AsyncClient(base_url=url) as http:
            scraped = (await http.get("/metrics")).text
    assert limited(scraped, "connections_total") == 1


async def test_waiting_connections_make_room_for_a_request() -> None:
    settings = settings_with(max_connections=4)
    app = create_app(settings=settings)
    async with running_server(app, **settings.uvicorn_options()) as url:

        async def states(expected: list[int]) -> None:
            await eventually(lambda: [tcp_state(s) for s in silent], expected.__eq__)

        with sockets() as silent:
            for _ in range(10):
                silent.append(connect(url))
            # Each newcomer over the cap took the place of the oldest silent connection.
            await states([CLOSED] * 6 + [ESTABLISHED] * 4)
            async with httpx.AsyncClient(base_url=url) as http:
                assert (await http.get("/healthz")).status_code == 200
                await states([CLOSED] * 7 + [ESTABLISHED] * 3)
                # The request's connection, idle now, waits for its next request too, but
                # has waited the least: a WebSocket takes the place of a silent one.
                async with ws_connect(url, "/ws") as ws:
                    await ws.send(json.dumps({"op": "ping"}))
                    assert (await recv_json(ws))["type"] == "pong"
                await states([CLOSED] * 8 + [ESTABLISHED] * 2)
                assert (await http.get("/healthz")).status_code == 200
                scraped = (await http.get("/metrics")).text
    # (More, should the client's idle connection have closed and been opened again.)
    assert limited(scraped, "connections_evicted") >= 8
    assert limited(scraped, "connections_total") == 0


# -- the deadline for a request's head ----------------------------------------------


async def test_a_head_not_sent_within_the_deadline_is_closed() -> None:
    settings = settings_with(header_timeout=0.5)
    app = create_app(settings=settings)
    async with running_server(app, **settings.uvicorn_options()) as url:
        with sockets() as clients:
            silent, trickling = connect(url), connect(url)
            clients += [silent, trickling]

            async def trickle() -> None:
                for byte in head_of(200):
                    trickling.send(bytes([byte]))
                    await asyncio.sleep(0.05)

            trickler = asyncio.create_task(trickle())
            try:
                await until_dropped(silent)
                await until_dropped(trickling)
            finally:
                trickler.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await trickler
            # A request sent in time is answered.
            async with httpx.AsyncClient(base_url=url) as http:
                assert (await http.get("/healthz")).status_code == 200
            # (A connection of its own: an idle one waits for its next head within the
            # deadline too.)
            async with httpx.AsyncClient(base_url=url) as http:
                scraped = (await http.get("/metrics")).text
    assert limited(scraped, "header_timeout") >= 2


async def test_an_idle_keep_alive_connection_is_closed_after_uvicorn_s_timeout() -> None:
    settings = settings_with()
    app = create_app(settings=settings)
    options = {**settings.uvicorn_options(), "timeout_keep_alive": 0.5}
    async with running_server(app, **options) as url:
        with sockets() as clients:
            client = connect(url)
            clients.append(client)
            client.sendall(head_of(100))
            client.settimeout(10)
            answer = await asyncio.to_thread(client.recv, 65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
            await until_dropped(client, within=5)


# -- the bound on a request's head ---------------------------------------------------


async def test_a_head_over_the_bound_is_answered_431() -> None:
    settings = settings_with(max_header_bytes=16 * 1024)
    app = create_app(settings=settings)
    async with running_server(app, **settings.uvicorn_options()) as url:
        with sockets() as clients:
            within, over = connect(url), connect(url)
            clients += [within, over]
            within.sendall(head_of(16 * 1024))
            assert (await read_answer(within)).startswith(b"HTTP/1.1 200 ")
            over.sendall(head_of(16 * 1024 + 1))
            head, _, body = (await read_answer(over)).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 ")
        assert json.loads(body)["error"] == "headers_too_large"


def send_huge_head(url: str, size: int, answers: list[bytes]) -> None:
    """Send a request whose head takes ``size`` bytes, then read the answer; a server
    that stops reading and closes leaves the send short (and the answer may be cut by
    the reset that unread bytes cause)."""
    with contextlib.closing(connect(url)) as client:
        with contextlib.suppress(OSError):
            client.sendall(head_of(size))
            answers.append(b"whole head sent")
        with contextlib.suppress(OSError):
            answers.append(read_until_closed(client))


async def test_huge_heads_do_not_grow_the_process(service: Service) -> None:
    # What took a service from 99 to 341 MiB, and was answered 200.
    size = 64 * 1024 * 1024
    before = service.process.memory_info().rss
    answers: list[bytes] = []
    senders = [
        threading.Thread(target=send_huge_head, args=(service.url, size, answers)) for _ in range(3)
    ]
    for sender in senders:
        sender.start()
    peak = before
    while any(sender.is_alive() for sender in senders):
        peak = max(peak, service.process.memory_info().rss)
        await asyncio.sleep(0.01)
    grown = peak - before
    assert grown < 32 * 1024 * 1024, f"grew by {grown / 2**20:.0f} MiB"
    assert b"whole head sent" not in answers
    assert not any(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    async with httpx.AsyncClient(base_url=service.url) as http:
        assert limited((await http.get("/metrics")).text, "header_bytes") >= 3


# -- responses nobody reads ------------------------------------------------------------


def open_never_read_stream(url: str, task_id: str) -> socket.socket:
    """A client that asks for ``/sse/tasks/{id}`` and never reads a byte of it."""
    stream = connect(url, receive_buffer=4096)
    stream.sendall(f"GET /sse/tasks/{task_id} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return stream


def report(client: redis.Redis, task_id: str, current: int) -> None:
    """A task's progress, with a message of a kilobyte, stored and announced as Celery's
    Redis backend does (SET, then PUBLISH on the key)."""
    key = keys.task_meta_key(env.KEY_PREFIX, task_id)
    progress = {"current": current, "total": 100_000, "message": "m" * 1000}
    record = json.dumps({"status": "PROGRESS", "result": progress, "task_id": task_id})
    client.set(key, record)
    client.publish(key, record)


@contextlib.asynccontextmanager
async def reporting(client: redis.Redis, task_id: str, every: float) -> AsyncIterator[None]:
    """The task reports progress every ``every`` seconds, while in the block."""
    report(client, task_id, 0)
    stop = asyncio.Event()

    async def run() -> None:
        for current in itertools.count(1):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return
            await asyncio.to_thread(report, client, task_id, current)

    reporter = asyncio.create_task(run())
    try:
        yield
    finally:
        stop.set()
        await reporter


async def test_a_never_read_event_stream_is_reset_while_a_reading_one_goes_on(
    redis_client: redis.Redis,
) -> None:
    settings = settings_with(slow_client_timeout=1.0)
    app = create_app(settings=settings)
    task_id = str(uuid.uuid4())
    async with (
        reporting(redis_client, task_id, 0.1),
        running_server(app, **settings.uvicorn_options()) as url,
        httpx.AsyncClient(base_url=url) as http,
        http.stream("GET", f"/sse/tasks/{task_id}") as reading,
    ):
        with sockets() as clients:
            never_read = open_never_read_stream(url, task_id)
            clients.append(never_read)
            # Its window closes within a few events; a second later it is reset.
            await eventually(lambda: tcp_state(never_read), lambda s: s == CLOSED, within=20)
        # The reading client was never judged, and still gets every change.
        events = await Reader(reading).events(until=None, count=30)
        assert [event.event for event in events] == ["status"] * 30
        async with httpx.AsyncClient(base_url=url) as scraper:
            scraped = (await scraper.get("/metrics")).text
    assert slow_clients_closed(scraped) == 1


async def test_a_quiet_event_stream_whose_client_reads_is_not_judged(
    redis_client: redis.Redis,
) -> None:
    settings = settings_with(slow_client_timeout=0.5)
    app = create_app(settings=settings)
    task_id = str(uuid.uuid4())
    report(redis_client, task_id, 0)
    async with (
        running_server(app, **settings.uvicorn_options()) as url,
        httpx.AsyncClient(base_url=url) as http,
        http.stream("GET", f"/sse/tasks/{task_id}") as reading,
    ):
        reader = Reader(reading)
        (first,) = await reader.events(until=None, count=1)
        assert first.message["progress"]["current"] == 0
        # The task is quiet for four timeouts: nothing waits for the client, which has
        # read all it was sent, so there is nothing to judge it by.
        await asyncio.sleep(4 * settings.slow_client_timeout)
        report(redis_client, task_id, 1)
        (later,) = await reader.events(until=None, count=1)
        assert later.message["progress"]["current"] == 1
        scraped = (await http.get("/metrics")).text
    assert slow_clients_closed(scraped) == 0


async def test_a_never_read_event_stream_is_reset_under_taskcast_serve(
    service: Service, redis_client: redis.Redis
) -> None:
    task_id = str(uuid.uuid4())
    async with reporting(redis_client, task_id, 0.1):
        with sockets() as clients:
            never_read = open_never_read_stream(service.url, task_id)
            clients.append(never_read)
            await eventually(lambda: tcp_state(never_read), lambda s: s == CLOSED, within=20)


async def abandoning_app(scope: dict[str, object], receive: object, send: object) -> None:
    """An ASGI app that writes a response until its client's buffers are full, then
    gives up on it without finishing it."""
    assert callable(send)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    chunk = {"type": "http.response.body", "body": b"x" * 65536, "more_body": True}
    with contextlib.suppress(TimeoutError):
        while True:
            async with asyncio.timeout(0.5):
                await send(chunk)


async def test_a_response_its_app_left_unfinished_is_reset() -> None:
    limits = ConnectionLimits(
        max_connections=0, header_timeout=10, max_header_bytes=32768, slow_client_timeout=600
    )
    async with running_server(abandoning_app, lifespan="off", http=http_protocol(limits)) as url:
        with sockets() as clients:
            client = connect(url, receive_buffer=4096)
            clients.append(client)
            client.sendall(head_of(100, "/"))
            # Never read: once the app gives up, the connection is reset, where a close
            # would wait for this client to read everything buffered.
            await eventually(lambda: tcp_state(client), lambda s: s == CLOSED, within=10)


def test_the_limits_pickle_for_uvicorn_s_worker_processes() -> None:
    protocol = settings_with(max_connections=7).uvicorn_options()["http"]
    copy = pickle.loads(pickle.dumps(protocol))
    assert copy.keywords["limits"] == protocol.keywords["limits"]
    assert copy.keywords["limits"].max_connections == 7
