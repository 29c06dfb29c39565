"""taskcast behind nginx, as deploy/nginx/taskcast.conf ships it: Debian's nginx in front
of three ``taskcast serve`` processes, with the session's Redis and Celery worker, and
clients that know only nginx's address (the Python client, taskcast.js in Chromium,
plain HTTP).

A replica is killed (SIGKILL) under a client's socket, mid-task: the client must come
back through nginx on another replica and see each status once, never going back, and
the final one exactly once. Which replica holds a socket is what each replica's own
``/metrics`` says (``taskcast_ws_connections``); where nginx sent each connection, its
access log (``$upstream_addr``).

nginx is installed with apt-get where /usr/sbin/nginx is missing (as root, by
tests.support.apt_install, as Chromium is), and runs as the test's child, in the
foreground, with its prefix, pid file, temporary files and logs in a directory of the
test's own, on a free loopback port: never the system's service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from playwright.async_api import Browser

import taskcast
from bench.proxy import NGINX, REPLICA_ENV, SHIPPED, SHIPPED_LOG, Nginx, render
from taskcast.api.sse import PING_SECONDS
from taskcast.cli.devstack import free_port
from taskcast.settings import Settings
from taskcast_celery import keys
from tests import env
from tests.browser import FOLLOW_SUBMITTED, check_followed, open_harness
from tests.support import (
    ROOT,
    WorkerProcess,
    apt_install,
    eventually,
    recv_json,
    running_record,
    submit,
    ws_connect,
)

# The first test may wait for apt-get to install nginx.
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """Debian's nginx, installed with apt-get if missing. Every nginx of these tests is
    the test's own child; the package's service is never used (where no policy-rc.d
    forbids it, Debian starts it on port 80 at install, as it does for any install)."""
    return apt_install("nginx", NGINX)


class Replica:
    """``taskcast serve`` in its own process, as tests.support.service_process runs it,
    kept at hand so that a test may kill it outright; its output goes to a file."""

    def __init__(self, environment: dict[str, str], log: Path) -> None:
        self.environment = environment
        self.log = log
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.output_file = log.open("wb")
        self.process: asyncio.subprocess.Process | None = None
        self.killed = False

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "taskcast", "serve", "--port", str(self.port),
            "--log-level", "info", env=self.environment, cwd=ROOT,
            stdout=self.output_file, stderr=self.output_file,
        )  # fmt: skip

    async def wait_healthy(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:

            async def healthy() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/healthz")).status_code == 200
                return False

            await eventually(healthy, bool, within=30)

    @property
    def alive(self) -> bool:
        return self.process is not None and not self.killed

    def kill(self) -> None:
        """SIGKILL: no close frame, no goodbye; the kernel closes its sockets."""
        assert self.process is not None
        self.process.kill()
        self.killed = True

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.output_file.close()

    async def sockets(self) -> int:
        """The WebSockets this replica holds, as its /metrics says."""
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            text = (await http.get("/metrics")).text
        found = re.search(r"^taskcast_ws_connections (\S+)$", text, re.MULTILINE)
        assert found, text
        return int(float(found.group(1)))

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Proxy:
    """nginx in front of replicas, all running."""

    def __init__(self, nginx: Nginx, replicas: list[Replica]) -> None:
        self.nginx = nginx
        self.replicas = replicas
        self.url = nginx.url

    async def holding_the_socket(self) -> Replica:
        """The one replica that holds a WebSocket (the test's client has the only one)."""

        async def counts() -> list[int]:
            return [await replica.sockets() for replica in self.live()]

        found = await eventually(counts, lambda counts: sorted(counts)[-2:] == [0, 1])
        return self.live()[found.index(1)]

    def live(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.alive]

    def connections_to(self, path: str) -> list[dict[str, str]]:
        """nginx's access log entries of ``path``: where each connection went."""
        return [entry for entry in self.nginx.access_log() if entry["uri"] == path]


@contextlib.asynccontextmanager
async def proxied(
    nginx_binary: str,
    directory: Path,
    count: int,
    settings: dict[str, str],
    read_timeout: str | None = None,
) -> AsyncIterator[Proxy]:
    """``count`` replicas with ``settings`` on top of this session's, and nginx in front of
    them with the shipped configuration (``read_timeout``: its read and send timeouts
    changed)."""
    replicas = [
        Replica({**os.environ, **REPLICA_ENV, **settings}, directory / f"replica-{i}.log")
        for i in range(count)
    ]
    port = free_port()
    site = render(f"127.0.0.1:{port}", [replica.address for replica in replicas], read_timeout)
    nginx = Nginx(nginx_binary, directory / "nginx", site, port)
    try:
        for replica in replicas:
            await replica.start()
        nginx.start()
        await asyncio.gather(*(replica.wait_healthy() for replica in replicas))
        await asyncio.to_thread(nginx.wait_ready)
        yield Proxy(nginx, replicas)
    finally:
        nginx.stop()
        await asyncio.gather(*(replica.stop() for replica in replicas))


@pytest.fixture(scope="module")
async def proxy(
    nginx_binary: str, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Proxy]:
    """Three replicas behind nginx, as deployed. Tests kill replicas: at least one
    remains for each test after them (two kill one each)."""
    directory = tmp_path_factory.mktemp("proxy")
    (directory / "nginx").mkdir()
    async with proxied(nginx_binary, directory, 3, {}) as running:
        yield running


def without_estimates(status: dict[str, Any]) -> dict[str, Any]:
    """A status but for rate and eta_s, which each replica measures on its own (null
    again in the first status a new replica sends)."""
    progress = status.get("progress")
    if isinstance(progress, dict):
        progress = {k: v for k, v in progress.items() if k not in ("rate", "eta_s")}
    return {**status, "progress": progress}


RANK = {"SENT": 0, "STARTED": 1, "PROGRESS": 2, "SUCCESS": 3}


def brief(statuses: list[dict[str, Any]]) -> list[str]:
    """Statuses in a few words each: state, then current, total and rate."""
    words = []
    for status in statuses:
        progress = status["progress"]
        figures = f" {progress['current']}/{progress['total']} rate={progress['rate']}"
        words.append(status["state"] + (figures if progress else ""))
    return words


def check_statuses(statuses: list[dict[str, Any]]) -> None:
    """Each status once (estimates aside), never back (by state, and by `current` within
    PROGRESS), exactly one final, last, and a success."""
    plain = [without_estimates(status) for status in statuses]
    for i, status in enumerate(plain):
        assert status not in plain[:i], brief(statuses)
    ranks = [RANK[status["state"]] for status in statuses]
    assert ranks == sorted(ranks), brief(statuses)
    currents = [s["progress"]["current"] for s in statuses if s["state"] == "PROGRESS"]
    assert currents == sorted(currents), brief(statuses)
    assert [s["final"] for s in statuses].count(True) == 1, brief(statuses)
    assert statuses[-1]["state"] == "SUCCESS", brief(statuses)


async def check_moved(proxy: Proxy, path: str, dead: Replica) -> None:
    """nginx sent ``path``'s first connection to ``dead`` (maybe after trying a replica
    that died before), and its last one to a replica still alive (maybe after trying
    ``dead`` first: ``$upstream_addr`` lists every replica tried). nginx logs a
    connection when it closes."""

    def logged() -> list[dict[str, str]]:
        return proxy.connections_to(path)

    entries = await eventually(logged, lambda entries: len(entries) >= 2)
    first, last = entries[0], entries[-1]
    assert first["upstream"].split(", ")[-1] == dead.address, entries
    assert last["status"] == "101", entries
    went_to = last["upstream"].split(", ")[-1]
    assert went_to in [replica.address for replica in proxy.live()], entries


# -- the shipped file --------------------------------------------------------------------


def test_the_shipped_timeouts_outlast_the_service_s_pings() -> None:
    # Defaults: nothing of this session's environment.
    slow_client_timeout = Settings.model_fields["slow_client_timeout"].default
    ping_interval = slow_client_timeout / 2  # Settings.uvicorn_options
    text = SHIPPED.read_text()
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        values = re.findall(rf"^ *{directive} +(\d+)s;$", text, re.MULTILINE)
        assert len(values) == 1, (directive, values)
        # Above the WebSocket's pings and the event stream's comments, and above the
        # service's own verdict on a silent client.
        assert int(values[0]) > max(ping_interval, PING_SECONDS, slow_client_timeout)


# -- plain HTTP and event streams --------------------------------------------------------


async def test_replicas_see_the_client_s_address_host_and_scheme_through_nginx(
    proxy: Proxy, worker: WorkerProcess
) -> None:
    marker = uuid.uuid4().hex
    # A client on another loopback address than nginx's own: what a replica logs as the
    # client can only have come from X-Forwarded-For.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=proxy.url, transport=transport, timeout=10) as http:
        # A client's own X-Forwarded-For is replaced by the address nginx saw.
        response = await http.get(
            f"/healthz?probe={marker}", headers={"X-Forwarded-For": "203.0.113.7"}
        )
        assert response.status_code == 200
        # The Host reaches the replicas as the client sent it: they refuse other names.
        response = await http.get("/healthz", headers={"Host": "rebound.example"})
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_host"
        # Links name the address the client used, port included, and its scheme.
        response = await http.post("/tasks/sleep", json={"seconds": 0})
        assert response.status_code == 202, response.text
        links = response.json()
        task_id = links["task_id"]
        assert links["status_url"] == f"{proxy.url}/tasks/{task_id}"
        assert links["ws_url"] == f"ws://{proxy.url.removeprefix('http://')}/ws/tasks/{task_id}"
        # /metrics is each replica's own, scraped from each: nginx does not pass it on.
        assert (await http.get("/metrics")).status_code == 404

    def logged() -> list[str]:
        return [
            line
            for replica in proxy.replicas
            for line in replica.output().splitlines()
            if marker in line
        ]

    lines = await eventually(logged, bool)
    assert len(lines) == 1 and "127.0.0.2:" in lines[0] and "203.0.113.7" not in lines[0], lines


async def test_the_shipped_access_log_leaves_tokens_out(proxy: Proxy) -> None:
    secret = f"SECRET{uuid.uuid4().hex}"
    task_id = str(uuid.uuid4())
    path = f"/tasks/{task_id}"
    # As a status_url carries its token; the same name percent-encoded, which the service
    # reads as `token` too; and a page whose own URL holds one, in the Referer.
    query = f"?token={secret}&%74oken={secret}"
    referer = f"https://app.example/watch?token={secret}#{secret}"
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
        response = await http.get(path + query, headers={"Referer": referer})
    assert response.status_code == 404, response.text  # unknown: nginx passed it on
    log = proxy.nginx.directory / SHIPPED_LOG

    def logged() -> list[str]:
        text = log.read_text() if log.exists() else ""
        return [line for line in text.splitlines() if task_id in line]

    [line] = await eventually(logged, bool)
    assert f'"GET {path} HTTP/1.1" 404 ' in line, line
    assert '"https://app.example/watch"' in line, line
    assert "upstream=127.0.0.1:" in line, line
    assert secret not in line and "token" not in line, line


async def read_events(lines: AsyncIterator[str], events: list[dict[str, Any]], count: int) -> None:
    """Add the data of an event stream's next events (from its ``lines``) to ``events``,
    until it holds ``count`` of them or the stream ends."""
    async for line in lines:
        if line.startswith("data: "):
            events.append(json.loads(line.removeprefix("data: ")))
            if len(events) == count:
                return


async def test_an_event_stream_through_nginx_is_not_held_back(
    proxy: Proxy, redis_client: redis.Redis
) -> None:
    # A task running (by its record), with no worker: it moves when the test says.
    task_id = str(uuid.uuid4())
    running_record(redis_client, task_id)
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
        async with http.stream("GET", f"/sse/tasks/{task_id}") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            async with asyncio.timeout(5):
                await read_events(lines, events, 1)
                # A change after the stream opened (the first event may have come with
                # the headers): it arrives alone, while the stream stays open.
                record = {"status": "PROGRESS", "result": {"current": 3, "total": 5}}
                key = keys.task_meta_key(env.KEY_PREFIX, task_id)
                redis_client.set(key, json.dumps({**record, "task_id": task_id}))
                await read_events(lines, events, 2)
            assert not response.is_closed
    assert [event["progress"]["current"] for event in events] == [2, 3], events


# -- a replica dies under a client -------------------------------------------------------


async def test_the_python_client_moves_to_another_replica_when_its_own_dies(
    proxy: Proxy, worker: WorkerProcess
) -> None:
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
        task_id = await submit(http, "progress", total=5, step_seconds=1.0)
    statuses: list[dict[str, Any]] = []
    arrivals: list[float] = []

    async def follow() -> None:
        async for status in taskcast.Client(proxy.url).watch(task_id, give_up_after=15):
            statuses.append(status)
            arrivals.append(time.monotonic())

    watching = asyncio.create_task(follow())

    def seen() -> list[dict[str, Any]]:
        if watching.done():
            watching.result()  # its error, if it failed
        return statuses

    try:
        # Killed right after a status arrived: the task does not move for a second,
        # so the new replica's first status is that one again (but for its estimates).
        await eventually(
            seen, lambda seen: any(s["progress"] and s["progress"]["current"] >= 2 for s in seen)
        )
        doomed = await proxy.holding_the_socket()
        doomed.kill()
        killed_at = time.monotonic()
        before = list(statuses)
        await asyncio.wait_for(watching, 20)
    finally:
        watching.cancel()
    assert not any(status["final"] for status in before), before
    after = [at - killed_at for at in arrivals[len(before) :]]
    print(
        f"python client through nginx: replica killed, next status {after[0]:.2f} s later; "
        f"{len(statuses)} statuses, {len(after)} after the kill"
    )
    check_statuses(statuses)
    await check_moved(proxy, f"/ws/tasks/{task_id}", doomed)


async def test_taskcast_js_moves_to_another_replica_when_its_own_dies(
    proxy: Proxy, browser: Browser, worker: WorkerProcess
) -> None:
    context = await browser.new_context()
    try:
        # The page comes from nginx's address: the client submits (a POST with the
        # page's Origin) and subscribes there, on one /ws socket.
        harness = await open_harness(context, proxy.url)
        spec = [("progress", {"total": 5, "step_seconds": 1.0})]
        [task_id] = await harness.run(FOLLOW_SUBMITTED, {"count": 1, "spec": spec})
        await harness.until(
            """(id) => log.some((e) => e.id === id && e.name === 'status'
                && e.value.state === 'PROGRESS' && e.value.progress.current >= 2)""",
            task_id,
        )
        doomed = await proxy.holding_the_socket()
        doomed.kill()
        killed_at = time.monotonic()
        assert await harness.run("count('final')") == 0
        await harness.until(
            """() => window.connections.some((c) => c.state === 'reconnecting')
                && window.connections.at(-1).state === 'open'"""
        )
        reopened = time.monotonic() - killed_at
        await harness.until("() => count('final') >= 1")
        print(
            f"taskcast.js through nginx: replica killed, socket open again {reopened:.2f} s later"
        )
        log = await harness.log()
        connections: list[dict[str, Any]] = await harness.run("window.connections")
        assert not harness.errors, harness.errors
    finally:
        await context.close()
    check_followed(log, task_id, "SUCCESS")
    # Open, then dropped without a close frame (nginx closed the page's connection when
    # the replica died: 1006), then open again (on the socket nginx gave another replica).
    states = [(c["state"], c.get("code")) for c in connections]
    assert states[:3] == [("connecting", None), ("open", None), ("reconnecting", 1006)], states
    assert states[-1] == ("open", None), states
    subscribes = [frame for frame in harness.sent if frame["op"] == "subscribe"]
    assert [frame["task_id"] for frame in subscribes] == [task_id, task_id], harness.sent
    await check_moved(proxy, "/ws", doomed)


# -- keep-alive through nginx ------------------------------------------------------------


async def test_server_pings_keep_a_silent_websocket_open_past_nginx_s_read_timeout(
    nginx_binary: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # The same configuration with a 4 s read timeout, before a replica that pings every
    # 1.5 s (TASKCAST_SLOW_CLIENT_TIMEOUT 3): the shipped 60 s against 15 s, faster.
    (tmp_path / "nginx").mkdir()
    settings = {"TASKCAST_SLOW_CLIENT_TIMEOUT": "3"}
    async with proxied(nginx_binary, tmp_path, 1, settings, read_timeout="4s") as proxy:
        task_id = str(uuid.uuid4())
        running_record(redis_client, task_id)
        # The client sends nothing, not even pings: only the server's pings (which it
        # answers) cross nginx.
        async with ws_connect(proxy.url, "/ws") as ws:
            opened = time.monotonic()
            # The control: an event stream whose first keep-alive comes after 15 s is
            # cut by nginx after 4 s of silence (no "end" event).
            events: list[dict[str, Any]] = []
            async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
                async with http.stream("GET", f"/sse/tasks/{task_id}") as response:
                    assert response.status_code == 200
                    async with asyncio.timeout(10):
                        with contextlib.suppress(httpx.RemoteProtocolError):
                            await read_events(response.aiter_lines(), events, 2)
            silent_for = time.monotonic() - opened
            assert [event["type"] for event in events] == ["status"], events
            assert silent_for >= 4, silent_for
            # The socket, silent as long, is still open.
            await ws.send(json.dumps({"op": "ping"}))
            assert await recv_json(ws) == {"type": "pong"}
        assert "upstream timed out" in proxy.nginx.errors()
