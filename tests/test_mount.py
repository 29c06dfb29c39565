"""taskcast inside an app of the team's own: mounted under a prefix in FastAPI (which
runs no lifespan of a mounted app), beside Django in one ASGI process, chained into an
outer app's lifespan, and behind a proxy that strips its prefix. Everything it hands out
carries the prefix; a SIGTERM ends it without a traceback.

Each app is served by a real uvicorn (in its own process where the log and the signal
matter) and followed by real HTTP, WebSocket and event-stream clients, the ``taskcast``
command and Chromium, with the session's worker running the tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets.asyncio.client
from playwright.async_api import Browser, expect
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from tests.browser import WAIT_MS
from tests.support import (
    ROOT,
    WorkerProcess,
    eventually,
    final,
    read_events,
    read_until_closed,
    recv_json,
    run_cli,
    running_server,
    service_process,
    session_app,
    settings_with,
    ws_connect,
)

pytestmark = pytest.mark.timeout(180)

PREFIX = "/jobs"
QUICK = {"total": 3, "step_seconds": 0.05}


@dataclass
class Served:
    """An ASGI app served by uvicorn in its own process: its base URL and its log."""

    url: str
    process: asyncio.subprocess.Process
    log: str

    def log_text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as file:
            return file.read()

    async def stop(self) -> None:
        """SIGTERM, as a deploy sends it; the process ends as uvicorn ends on it (once
        shut down, uvicorn raises the signal again for the default handler: -15)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await self.process.wait()
        assert self.process.returncode in (0, -signal.SIGTERM), self.log_text()


@asynccontextmanager
async def uvicorn_process(target: str, answers: str) -> AsyncIterator[Served]:
    """``uvicorn TARGET`` from the project's root, with this session's environment; ready
    once ``answers`` (a path) answers 200."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w+b", suffix=".log", delete=False) as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "uvicorn", target, "--port", str(port),
            "--log-level", "info", cwd=ROOT, env=dict(os.environ), stdout=log, stderr=log,
        )  # fmt: skip
    served = Served(f"http://127.0.0.1:{port}", process, log.name)
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=2) as http:

            async def ready() -> bool:
                assert process.returncode is None, served.log_text()
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get(answers)).status_code == 200
                return False

            await eventually(ready, bool, within=30)
        yield served
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.unlink(log.name)


@pytest.fixture(scope="module")
async def fastapi_app(worker: WorkerProcess) -> AsyncIterator[Served]:
    """tests/mounted_app.py: FastAPI, its own routes and lifespan, taskcast at /jobs."""
    async with uvicorn_process("tests.mounted_app:api", "/hello") as served:
        yield served


def lifespans_started() -> int:
    """How many lifespans requests started on this loop (tasks of that name)."""
    return sum(task.get_name() == "taskcast-lifespan" for task in asyncio.all_tasks())


def hubs() -> set[asyncio.Task[object]]:
    """The hubs running on this loop (the session's own among them)."""
    return {task for task in asyncio.all_tasks() if task.get_name() == "taskcast-hub"}


async def dispatch(http: httpx.AsyncClient, base: str, path: str, body: Any) -> dict[str, Any]:
    response = await http.post(f"{base}{path}", json=body)
    assert response.status_code == 202, response.text
    links: dict[str, Any] = response.json()
    assert response.headers["location"] == links["status_url"]
    return links


async def follow_over_ws(ws_url: str) -> dict[str, Any]:
    """A task's statuses over its WebSocket link, until its final; that final."""
    async with websockets.asyncio.client.connect(ws_url, compression=None) as ws:
        messages, code = await read_until_closed(ws)
    assert code == 1000
    assert messages and final(messages[-1]), messages
    return messages[-1]


async def test_mounted_in_fastapi_every_link_carries_the_prefix(fastapi_app: Served) -> None:
    base = fastapi_app.url
    async with httpx.AsyncClient(timeout=10) as http:
        # The team's own route, and its own lifespan, as before.
        hello = await http.get(f"{base}/hello")
        assert hello.json() == {"greeting": "hello from the team's app"}

        links = await dispatch(http, base, f"{PREFIX}/tasks/progress", QUICK)
        task_id = links["task_id"]
        assert links["status_url"] == f"{base}{PREFIX}/tasks/{task_id}"
        assert (
            links["ws_url"] == f"ws://127.0.0.1:{base.rsplit(':', 1)[1]}{PREFIX}/ws/tasks/{task_id}"
        )
        assert (await follow_over_ws(links["ws_url"]))["state"] == "SUCCESS"
        status = await http.get(links["status_url"])
        assert status.status_code == 200 and status.json()["state"] == "SUCCESS"

        # An event stream, and celery-progress's endpoints, under the prefix.
        async with http.stream("GET", f"{base}{PREFIX}/sse/tasks/{task_id}") as stream:
            assert stream.status_code == 200
            events = await read_events(stream)
        assert events[0].message["state"] == "SUCCESS" and events[-1].event == "end"
        bar = await http.get(f"{base}{PREFIX}/celery-progress/{task_id}/")
        assert bar.status_code == 200 and bar.json()["complete"] is True
        async with ws_connect(base, f"{PREFIX}/ws/progress/{task_id}/") as ws:
            await ws.send('{"type": "check_task_completion"}')
            assert (await recv_json(ws))["success"] is True

        # A group's links, and OpenAPI's server.
        group = await dispatch(
            http, base, f"{PREFIX}/groups/progress", {"count": 2, "params": QUICK}
        )
        assert group["status_url"] == f"{base}{PREFIX}/groups/{group['group_id']}"
        assert f"{PREFIX}/ws/groups/{group['group_id']}" in group["ws_url"]
        assert (await follow_over_ws(group["ws_url"]))["state"] == "SUCCESS"
        document = (await http.get(f"{base}{PREFIX}/openapi.json")).json()
        assert document["servers"] == [{"url": PREFIX}]
        assert "/tasks/{task_id}" in document["paths"]

        # The outer app's own 404s stay its own.
        assert (await http.get(f"{base}/tasks/{task_id}")).status_code == 404


async def test_taskcast_watch_follows_a_mounted_status_url(fastapi_app: Served) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        links = await dispatch(http, fastapi_app.url, f"{PREFIX}/tasks/progress", QUICK)
    code, out, err = await run_cli("watch", links["status_url"], within=60)
    assert code == 0, (out, err)
    assert "SUCCESS" in out


async def test_the_demo_page_works_under_the_prefix(fastapi_app: Served, browser: Browser) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[Exception] = []
    page.on("pageerror", lambda error: errors.append(error))
    try:
        # Without its trailing slash, as a reader types it: redirected to the directory,
        # where the page's relative URLs resolve under the prefix.
        await page.goto(f"{fastapi_app.url}{PREFIX}")
        assert page.url == f"{fastapi_app.url}{PREFIX}/"
        await expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        form = page.locator('form[data-task="progress"]')
        await form.get_by_label("total", exact=True).fill("3")
        await form.get_by_label("step_seconds", exact=True).fill("0.05")
        await form.get_by_role("button", name="Start progress").click()
        row = page.locator(".task").first
        await expect(row.locator(".state")).to_have_text("SUCCESS", timeout=WAIT_MS)
    finally:
        await context.close()
    assert not errors, errors


async def test_sigterm_stops_a_mounted_service_without_a_traceback(worker: WorkerProcess) -> None:
    # A process of its own: this test ends it.
    async with uvicorn_process("tests.mounted_app:api", "/hello") as served:
        async with httpx.AsyncClient(timeout=10) as http:
            links = await dispatch(http, served.url, f"{PREFIX}/tasks/progress", QUICK)
            # A watcher still open as the signal comes, and the hub running.
            async with websockets.asyncio.client.connect(links["ws_url"]) as ws:
                await recv_json(ws)
                await served.stop()
        log = served.log_text()
    assert "Application shutdown complete" in log and "Finished server process" in log, log
    assert "Traceback" not in log and "ERROR" not in log, log


async def test_beside_django_in_one_process(worker: WorkerProcess) -> None:
    async with (
        uvicorn_process("tests.django_site.asgi:application", "/hello/") as served,
        httpx.AsyncClient(timeout=10) as http,
    ):
        hello = await http.get(f"{served.url}/hello/")
        assert hello.json() == {"greeting": "hello from Django", "path": "/hello/"}
        # Django's own 404 for what is neither its nor taskcast's.
        assert (await http.get(f"{served.url}/nowhere/")).status_code == 404

        links = await dispatch(http, served.url, f"{PREFIX}/tasks/progress", QUICK)
        assert links["status_url"].startswith(f"{served.url}{PREFIX}/tasks/")
        assert (await follow_over_ws(links["ws_url"]))["state"] == "SUCCESS"
        await served.stop()
        log = served.log_text()
    assert "Traceback" not in log, log


async def test_an_outer_app_that_chains_the_lifespan_is_used(worker: WorkerProcess) -> None:
    jobs = create_app(session_app(), settings=settings_with())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with jobs.router.lifespan_context(jobs):
            yield

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    outer = Starlette(routes=[Route("/", home), Mount(PREFIX, jobs)], lifespan=lifespan)
    started_before = lifespans_started()
    async with running_server(outer) as url, httpx.AsyncClient(timeout=10) as http:
        # The outer app's lifespan ran taskcast's, before any request.
        assert hasattr(jobs.state, "taskcast")
        links = await dispatch(http, url, f"{PREFIX}/tasks/progress", QUICK)
        assert links["status_url"].startswith(f"{url}{PREFIX}/tasks/")
        assert (await follow_over_ws(links["ws_url"]))["state"] == "SUCCESS"
        # No request had to start one.
        assert lifespans_started() == started_before


async def test_a_request_starts_the_lifespan_of_an_app_mounted_without_one(
    worker: WorkerProcess,
) -> None:
    jobs = create_app(session_app(), settings=settings_with())
    outer = Starlette(routes=[Mount(PREFIX, jobs)])
    started_before, hubs_before = lifespans_started(), hubs()
    async with running_server(outer) as url, httpx.AsyncClient(timeout=10) as http:
        assert not hasattr(jobs.state, "taskcast")
        # Many first requests at once share one start.
        answers = await asyncio.gather(*(http.get(f"{url}{PREFIX}/healthz") for _ in range(20)))
        assert {answer.status_code for answer in answers} == {200}
        assert hasattr(jobs.state, "taskcast")
        assert lifespans_started() == started_before + 1
        (hub_task,) = hubs() - hubs_before
    # Stopped on demand: its hub and Redis closed, its task gone.
    await jobs.aclose()
    assert lifespans_started() == started_before
    assert hub_task.done()


async def test_behind_a_proxy_that_strips_the_prefix(worker: WorkerProcess) -> None:
    """TASKCAST_ROOT_PATH: the proxy forwards /jobs/tasks/x as /tasks/x; what the service
    hands out names /jobs, where the proxy serves it."""
    environment = {**os.environ, "TASKCAST_ROOT_PATH": PREFIX}
    async with (
        service_process(environment) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        response = await http.post("/tasks/progress", json=QUICK)
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        assert response.json()["status_url"] == f"{url}{PREFIX}/tasks/{task_id}"
        assert (await http.get("/openapi.json")).json()["servers"] == [{"url": PREFIX}]


def test_a_root_path_is_a_path_prefix() -> None:
    assert settings_with().root_path == ""
    for wrong in ("jobs", "/jobs/", "/jobs?x=1"):
        with pytest.raises(ValueError, match="not a path prefix"):
            type(settings_with())(root_path=wrong)
