"""Helpers shared by the integration tests: waiting, a worker process, a live server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import redis
import redis.asyncio
import uvicorn
import websockets.asyncio.client
from celery import Celery
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from taskcast.cli.devstack import free_port
from taskcast.live.transport import TaskcastWebSocketProtocol
from taskcast.settings import Settings
from taskcast_celery import keys
from taskcast_celery.demo.celery import create_demo_app
from taskcast_celery.demo.settings import DemoSettings
from taskcast_celery.states import FINAL_STATES
from tests import env

T = TypeVar("T")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    within: float = 15.0,
    interval: float = 0.02,
) -> T:
    """Call ``probe`` until ``accept`` approves its answer; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
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
    """Never backwards, exactly one final, and it comes last."""
    currents = [s["progress"]["current"] for s in statuses if s["state"] == "PROGRESS"]
    assert currents == sorted(currents)
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
        await eventually(lambda: asyncio.sleep(0, server.started), bool, within=10)
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


def settings_with(**changes: Any) -> Settings:
    """This session's service settings (from the environment), with ``changes``."""
    return Settings().model_copy(update=changes)


def demo_app(**changes: Any) -> Celery:
    """A demo app of a test's own: this session's demo settings with ``changes`` (another
    queue, a dead Redis), made taskcast-ready like the session's."""
    return create_demo_app(DemoSettings().model_copy(update=changes))


def ws_url(base_url: str, path: str) -> str:
    return "ws" + base_url.removeprefix("http") + path


def ws_connect(base_url: str, path: str, **options: Any) -> websockets.asyncio.client.connect:
    """A real WebSocket client (no compression, no keepalive pings) to ``path``."""
    options.setdefault("compression", None)
    options.setdefault("ping_interval", None)
    return websockets.asyncio.client.connect(ws_url(base_url, path), **options)


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
        lambda: asyncio.sleep(0, "".join(output)),
        lambda text: "taskcast dev is ready" in text or process.returncode is not None,
        within=60,
    )
    return text
