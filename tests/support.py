"""Helpers shared by the integration tests: waiting, a worker process, a live server."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
import redis
import redis.asyncio
import uvicorn
import websockets.asyncio.client
from celery import Celery
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from taskcast.cli.devstack import free_port
from taskcast.live.ws_transport import TaskcastWebSocketProtocol
from taskcast.settings import Settings
from taskcast_celery import keys
from taskcast_celery.demo.settings import DemoSettings
from taskcast_celery.states import FINAL_STATES
from tests import env

T = TypeVar("T")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    accept: Callable[[T], bool],
    within: float = 15.0,
    interval: float = 0.02,
) -> T:
    """Call ``probe`` until ``accept`` approves its answer; fail after ``within`` seconds.

    ``probe`` returns its answer, or an awaitable of it (a coroutine, ``asyncio.to_thread``
    for a blocking read), which is awaited; either way the event loop runs between polls,
    so a plain probe may read what other tasks change (``lambda: hub.watched``).
    """
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        answer = probe()
        last = await answer if inspect.isawaitable(answer) else answer
        if accept(last):
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s; last answer: {last!r}")


async def wait_for_state(
    client: httpx.AsyncClient,
    task_id: str,
    accept: Callable[[dict[str, Any]], bool],
    within: float = 15.0,
) -> dict[str, Any]:
    """Poll ``GET /tasks/{id}`` until its status satisfies ``accept``."""

    async def probe() -> dict[str, Any]:
        response = await client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        return status

    return await eventually(probe, accept, within)


def final(status: dict[str, Any]) -> bool:
    return bool(status["final"])


def assert_progress_in_order(statuses: list[dict[str, Any]]) -> None:
    """Progress never backwards, exactly one final, and it comes last.

    There must be progress to check: it fails on no statuses, or on statuses none of
    which carries progress (a success's status carries its task's last progress).
    """
    assert statuses, "no statuses at all"
    currents = [s["progress"]["current"] for s in statuses if s["progress"] is not None]
    assert currents, f"no status carries progress: {[s['state'] for s in statuses]}"
    assert currents == sorted(currents), currents
    finals = [s for s in statuses if s["final"]]
    assert len(finals) == 1
    assert statuses[-1] is finals[0]


def task_keys(client: redis.Redis, prefix: str) -> set[bytes]:
    """The record keys of every task this session has published so far."""
    return set(client.scan_iter(match=keys.task_meta_key(prefix, "*"), count=1000))


class Published:
    """Every record the result backend PUBLISHes for one task, in order.

    Enter it before the task is sent: then no state is missed however brief, such as
    a RETRY that lasts only as long as its retry's countdown.
    """

    def __init__(self, redis_url: str, prefix: str, task_id: str) -> None:
        self._channel = keys.task_meta_key(prefix, task_id)
        self._pubsub = redis.asyncio.Redis.from_url(redis_url).pubsub()
        self.records: list[dict[str, Any]] = []

    async def __aenter__(self) -> Published:
        await self._pubsub.subscribe(self._channel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pubsub.aclose()

    async def until_final(self, within: float = 15.0) -> list[dict[str, Any]]:
        """The records so far, once the last of them is a final state."""

        async def collect() -> list[dict[str, Any]]:
            while (message := await self._pubsub.get_message(timeout=0.05)) is not None:
                if message["type"] == "message":
                    self.records.append(json.loads(message["data"]))
            return self.records

        return await eventually(
            collect, lambda records: bool(records) and records[-1]["status"] in FINAL_STATES, within
        )


class WorkerProcess:
    """A real Celery worker (prefork pool) in a subprocess, with this session's settings:
    started with Celery's own command, ``celery -A <app> worker``, as a user would."""

    def __init__(
        self,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        queues: str | None = None,
        logfile: str | None = None,
        app: str = "taskcast_celery.demo",
        cwd: str = ROOT,
    ) -> None:
        self.app = app
        self.cwd = cwd
        self.concurrency = concurrency
        self.queues = queues
        self.logfile = logfile
        self.hostname = f"test-{os.getpid()}-{free_port()}@localhost"
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "--pool", "prefork", "--concurrency", str(self.concurrency),
            "--hostname", self.hostname, "--loglevel", "WARNING",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        if self.queues:
            argv += ["--queues", self.queues]
        if self.logfile:
            argv += ["--logfile", self.logfile, "--loglevel", "INFO"]
        self.process = subprocess.Popen(argv, env=self.env, cwd=self.cwd, start_new_session=True)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def worker_on(queue: str, **env: str) -> Iterator[WorkerProcess]:
    """A worker of a test's own, with one process, on a queue of its own (so that a test
    may kill it), with ``env`` on top of this session's environment."""
    process = WorkerProcess(concurrency=1, queues=queue, env={**os.environ, **env})
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.asynccontextmanager
async def running_server(
    app: Starlette, send_buffer: int | None = None, port: int = 0, **config: Any
) -> AsyncIterator[str]:
    """Serve ``app`` with a real uvicorn on a loopback port; yield its base URL.

    ``port`` 0 takes a free one; a fixed one lets a test stop a server and start
    another at the same address, as a restart does.

    ``send_buffer`` caps the kernel send buffer of every accepted socket (they inherit
    it from the listening socket), so a client that stops reading backs the server up
    within kilobytes rather than the megabytes loopback would otherwise absorb.
    """
    config.setdefault("ws", TaskcastWebSocketProtocol)
    config.setdefault("http", Settings().uvicorn_options()["http"])
    config.setdefault("ws_per_message_deflate", False)
    # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY only on sockets whose proto is
    # TCP, and accepted sockets inherit it from the listener. With proto 0, Nagle holds a
    # small frame written right after another until the client's delayed ACK (40 ms).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    listener.bind(("127.0.0.1", port))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        await eventually(lambda: server.started, bool, within=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        listener.close()


@contextlib.asynccontextmanager
async def service_process(
    env: dict[str, str],
    log_level: str = "warning",
    output: int | None = None,
    app: str | None = None,
    cwd: str = ROOT,
) -> AsyncIterator[str]:
    """`taskcast serve` in its own process, as in production; yield its base URL.

    ``output``, a file descriptor, receives the process's stdout and stderr; ``app`` is
    its ``--app``, from ``cwd``.
    """
    port = free_port()
    serving = ["--app", app] if app else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskcast", "serve", "--port", str(port), *serving,
        "--log-level", log_level, env=env, cwd=cwd, stdout=output, stderr=output,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2) as http:

            async def healthy() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/healthz")).status_code == 200
                return False

            await eventually(healthy, bool, within=20)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def beat(client: redis.Redis, task_id: str, ago_s: float) -> None:
    """Write a task's heartbeat as its worker would have ``ago_s`` seconds ago (on
    Redis's clock), for tests of stalled tasks that kill no worker."""
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    client.set(keys.heartbeat_key(env.KEY_PREFIX, task_id), now_ms - int(ago_s * 1000))


def running_record(client: redis.Redis, task_id: str) -> None:
    """Write the record of a task at 2 of 5, as its worker's ``update_state`` would."""
    meta = {"status": "PROGRESS", "result": {"current": 2, "total": 5}, "task_id": task_id}
    client.set(keys.task_meta_key(env.KEY_PREFIX, task_id), json.dumps(meta))


def write_progress(task_id: str, current: int, total: int, message: str = "") -> None:
    """A state change, written the way update_state writes it (SET + PUBLISH)."""
    meta = {"current": current, "total": total, "message": message}
    session_app().backend.store_result(task_id, meta, "PROGRESS")


def write_success(task_id: str) -> None:
    """A task's success, written the way its worker writes it (SET + PUBLISH)."""
    session_app().backend.store_result(task_id, "done", "SUCCESS")


def settings_with(**changes: Any) -> Settings:
    """This session's service settings (from the environment), with ``changes``."""
    return Settings().model_copy(update=changes)


def session_app() -> Celery:
    """The session's demo app, ``taskcast_celery.demo.celery.app``: the one the session's
    worker and server run.

    Imported here, when a test first needs it, and never at a module's top: the demo app
    reads the environment as it is built, and the session's Redis and Mailtrap are set
    there by the ``environment`` fixture (tests/env.py), after collection.
    """
    from taskcast_celery.demo.celery import app

    return app


def demo_app(**changes: Any) -> Celery:
    """A demo app of a test's own: this session's demo settings with ``changes`` (another
    queue, a dead Redis), made taskcast-ready like the session's."""
    from taskcast_celery.demo.celery import create_demo_app

    return create_demo_app(DemoSettings().model_copy(update=changes))


def ws_url(base_url: str, path: str) -> str:
    return "ws" + base_url.removeprefix("http") + path


def ws_connect(base_url: str, path: str, **options: Any) -> websockets.asyncio.client.connect:
    """A real WebSocket client (no compression, no keepalive pings) to ``path``."""
    options.setdefault("compression", None)
    options.setdefault("ping_interval", None)
    return websockets.asyncio.client.connect(ws_url(base_url, path), **options)


def small_window_socket(base_url: str) -> socket.socket:
    """A client socket with a tiny receive buffer, so that a client that stops reading
    backs the server up within kilobytes instead of the megabytes loopback allows."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = base_url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


async def recv_json(ws: ClientConnection, within: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        message: dict[str, Any] = json.loads(await ws.recv())
        return message


async def read_until_closed(
    ws: ClientConnection, within: float = 15.0
) -> tuple[list[dict[str, Any]], int | None]:
    """Every message until the server closes; and the close code it sent."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        # Iteration ends quietly on 1000 and raises on any other close code.
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                messages.append(json.loads(raw))
    return messages, ws.close_code


@dataclass
class Event:
    """One event as EventSource dispatches it."""

    event: str = "message"
    id: str | None = None
    data: list[str] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def message(self) -> dict[str, Any]:
        """Its data, as the JSON it is."""
        parsed: dict[str, Any] = json.loads("\n".join(self.data))
        return parsed


class Reader:
    """A stream read as EventSource reads it: blocks of fields between blank lines."""

    def __init__(self, response: httpx.Response) -> None:
        self.blocks = self._blocks(response)

    @staticmethod
    async def _blocks(response: httpx.Response) -> AsyncIterator[Event]:
        current = Event()
        async for line in response.aiter_lines():
            if line == "":
                yield current
                current = Event()
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                current.comments.append(value)
            elif name == "data":
                current.data.append(value)
            elif name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "retry":
                current.retry = int(value)

    async def events(self, until: str | None = "end", count: int | None = None) -> list[Event]:
        """Events (blocks with data) until one of type ``until``, ``count`` of them, or
        the end of the stream."""
        seen: list[Event] = []
        async with asyncio.timeout(15):
            async for event in self.blocks:
                if not event.data:
                    continue
                seen.append(event)
                if event.event == until or (count is not None and len(seen) == count):
                    break
        return seen


async def read_events(
    response: httpx.Response, until: str | None = "end", count: int | None = None
) -> list[Event]:
    """An event stream's events, read as EventSource reads them (see ``Reader.events``)."""
    return await Reader(response).events(until, count)


async def submit(client: httpx.AsyncClient, name: str, **params: Any) -> str:
    response = await client.post(f"/tasks/{name}", json=params)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def read_output(process: asyncio.subprocess.Process) -> tuple[list[str], asyncio.Task[None]]:
    """Keep reading a child's stdout, line by line, into the list returned (a full pipe
    would block the child's logging); the task ends when the child closes it."""
    output: list[str] = []

    async def pump() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            output.append(line.decode(errors="replace"))

    return output, asyncio.create_task(pump())


async def dev_banner(process: asyncio.subprocess.Process, output: list[str]) -> str:
    """What `taskcast dev` printed once it says it is ready, or once it exited."""
    text: str = await eventually(
        lambda: "".join(output),
        lambda text: "taskcast dev is ready" in text or process.returncode is not None,
        within=60,
    )
    return text


@contextlib.asynccontextmanager
async def cli(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m taskcast`` with pipes (not a terminal), killed if still running at exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskcast", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_cli(
    *args: str, env: dict[str, str] | None = None, within: float = 30
) -> tuple[int | None, str, str]:
    """Run the command to its end: exit code, stdout, stderr."""
    async with cli(*args, env=env) as process, asyncio.timeout(within):
        out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


def apt_install(package: str, binary: str) -> str:
    """``binary``, installing Debian's ``package`` with apt-get first if it is missing.

    Only as root, where apt-get exists; the test fails otherwise, or if apt-get does. It
    waits up to two minutes for a dpkg lock another install holds (other test runs on
    this machine).
    """
    if os.path.exists(binary):
        return binary
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(f"{binary} is missing; install Debian's {package} package (as root)")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=120"]
    for argv, timeout in (
        (["apt-get", *lock, "update", "-q"], 90),
        (["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", package], 180),
    ):
        done = subprocess.run(argv, env=apt_env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return binary


def unavailable(reason: str) -> None:
    """Skip the test for want of an outside service (``reason`` says which, and how to
    point the tests at one); under ``CI=true``, where every service must be there, fail.
    Never returns."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required: CI=true)")
    pytest.skip(reason)
