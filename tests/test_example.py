"""The example project (examples/myproj), run as a user runs it: its own Celery app and
tasks, its worker started with ``celery -A myproj worker``, ``taskcast serve --app
myproj``, and a producer of its own that calls ``.delay()`` in another process and mints
a watch token with ``taskcast.sign_watch_token``."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis

from taskcast.cli.devstack import free_port
from taskcast_celery import keys
from tests import env
from tests.support import (
    ROOT,
    WorkerProcess,
    dev_banner,
    eventually,
    read_output,
    read_until_closed,
    recv_json,
    service_process,
    ws_connect,
)

EXAMPLES = os.path.join(ROOT, "examples")
PREFIX = f"{env.KEY_PREFIX}myproj:"
SECRET = secrets.token_urlsafe(48)


@pytest.fixture(scope="module")
def project_env(redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """The project's environment: its own settings (MYPROJ_*), taskcast's secret, and
    the project on the import path, as in its own checkout."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TASKCAST_")}
    environ.update(
        MYPROJ_REDIS_URL=env.REDIS_URL,
        MYPROJ_KEY_PREFIX=PREFIX,
        TASKCAST_SECRET=SECRET,
        PYTHONPATH=os.pathsep.join([EXAMPLES, environ.get("PYTHONPATH", "")]),
    )
    yield environ
    for key in redis_client.scan_iter(match=f"{PREFIX}*", count=1000):
        redis_client.delete(key)


@pytest.fixture(scope="module")
async def service(project_env: dict[str, str]) -> AsyncIterator[str]:
    async with service_process(project_env, app="myproj", cwd=EXAMPLES) as url:
        yield url


async def python(project_env: dict[str, str], *argv: str) -> dict[str, Any]:
    """Run a script of the project (``producer.py``, or code) and read its JSON line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, env=project_env, cwd=EXAMPLES,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    reply: dict[str, Any] = json.loads(out)
    return reply


async def test_a_delay_from_the_project_is_followed_live_with_a_minted_token(
    service: str, project_env: dict[str, str], redis_client: redis.Redis
) -> None:
    produced = await python(project_env, "producer.py", "5")
    task_id, token = produced["task_id"], produced["token"]
    async with httpx.AsyncClient(base_url=service, timeout=10) as http:
        # No worker runs yet: the task is known, and queued.
        sent = await http.get(f"/tasks/{task_id}", params={"token": token})
        assert sent.status_code == 200, sent.text
        assert (sent.json()["state"], sent.json()["final"]) == ("SENT", False)
        # Nothing opens without the token (the service has a secret).
        assert (await http.get(f"/tasks/{task_id}")).status_code == 401
        forged = await http.get(f"/tasks/{task_id}", params={"token": token[:-2] + "xx"})
        assert forged.status_code == 401
    async with ws_connect(service, f"/ws/tasks/{task_id}") as refused:
        messages, code = await read_until_closed(refused)
    assert (messages[0]["code"], code) == ("unauthorized", 4401)

    async with ws_connect(service, f"/ws/tasks/{task_id}?token={token}") as ws:
        assert (await recv_json(ws))["state"] == "SENT"
        worker = WorkerProcess(concurrency=1, app="myproj", cwd=EXAMPLES, env=project_env)
        worker.start()
        try:
            frames, code = await read_until_closed(ws, within=60)
            # The project's own worker beat for it: its heartbeat key came and went.
            assert not redis_client.exists(keys.heartbeat_key(PREFIX, task_id))
        finally:
            worker.stop()
    assert code == 1000
    reported = [frame for frame in frames if frame["state"] == "PROGRESS"]
    assert reported, frames
    for frame in reported:
        progress = frame["progress"]
        page = progress["current"]
        # celery-progress's ProgressRecorder meta: its "description" is the message.
        assert progress["message"] == f"Quarterly report: page {page} of 5"
        assert progress["percent"] == page * 20.0 and progress["total"] == 5
    final = frames[-1]
    assert (final["state"], final["result"]) == ("SUCCESS", "Quarterly report: 5 pages")
    assert final["progress"]["percent"] == 100.0 and not any(f["stalled"] for f in frames)


@pytest.fixture(scope="module")
def project_worker(project_env: dict[str, str], service: str) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(concurrency=2, app="myproj", cwd=EXAMPLES, env=project_env)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


async def test_exposed_tasks_start_over_rest_and_the_rest_do_not(
    service: str, project_worker: WorkerProcess, project_env: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=service, timeout=10) as http:
        listing = (await http.get("/tasks")).json()["tasks"]
        assert [task["name"] for task in listing] == ["import_rows", "report"]
        assert listing[1]["summary"].startswith("Build a report page by page")
        spec = (await http.get("/openapi.json")).json()
        assert {"/tasks/import_rows", "/tasks/report"} <= set(spec["paths"])
        assert "/tasks/cleanup" not in spec["paths"]
        # The tutorial's paths start the demo's tasks: this app has none of them.
        assert "/async-process/" not in spec["paths"]
        rows = spec["components"]["schemas"]["ImportRowsParams"]["properties"]["rows"]
        assert (rows["type"], rows["default"]) == ("integer", 10)

        wrong = await http.post("/tasks/import_rows", json={"rows": "many"})
        assert wrong.status_code == 422 and wrong.json()["detail"].startswith("rows: ")
        missing = await http.post("/tasks/report", json={})
        assert missing.status_code == 422
        assert missing.json()["detail"] == "pages: Field required"
        hidden = await http.post("/tasks/cleanup", json={})
        assert (hidden.status_code, hidden.json()["error"]) == (404, "unknown_task_name")

        started = await http.post("/tasks/import_rows", json={"rows": 3, "delay": 0.05})
        assert started.status_code == 202
        links = started.json()

        async def status() -> dict[str, Any]:
            reply: dict[str, Any] = (await http.get(links["status_url"])).json()
            return reply

        done = await eventually(status, lambda s: s["final"], within=30)
        assert (done["state"], done["result"]) == ("SUCCESS", {"imported": 3})

        # A task nobody may start over the API can still be followed, with its token.
        internal = await python(
            project_env,
            "-c",
            "import json, os, taskcast; from myproj.tasks import cleanup; "
            "r = cleanup.delay(7); "
            "print(json.dumps({'id': r.id, "
            "'token': taskcast.sign_watch_token(r.id, secret=os.environ['TASKCAST_SECRET'])}))",
        )

        async def internal_status() -> dict[str, Any]:
            reply = await http.get(f"/tasks/{internal['id']}", params={"token": internal["token"]})
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            return body

        cleaned = await eventually(internal_status, lambda s: s["final"], within=30)
        assert (cleaned["state"], cleaned["result"]) == ("SUCCESS", 7)


async def test_dev_runs_the_project_app_on_its_own_redis(project_env: dict[str, str]) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskcast", "dev", "--app", "myproj", "--port", str(port),
        "--concurrency", "1",
        env=project_env, cwd=EXAMPLES,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, reader = read_output(process)
    try:
        text = await dev_banner(process, output)
        assert "taskcast dev is ready" in text, text
        assert "  App        myproj\n" in text
        assert "(the result backend of myproj)" in text
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            started = await http.post("/tasks/import_rows", json={"rows": 2, "delay": 0.05})
            assert started.status_code == 202, started.text

            async def status() -> dict[str, Any]:
                reply: dict[str, Any] = (await http.get(started.json()["status_url"])).json()
                return reply

            done = await eventually(status, lambda s: s["final"], within=30)
            assert (done["state"], done["result"]) == ("SUCCESS", {"imported": 2})
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        await reader


async def test_an_app_that_cannot_be_served_is_one_clear_line(
    project_env: dict[str, str],
) -> None:
    for app, said in (
        ("myproj.nothing", "cannot load the Celery app 'myproj.nothing'"),
        # The module is there, the attribute is not: named as such, not as a module.
        (
            "myproj.celery:wrong",
            "cannot load the Celery app 'myproj.celery:wrong': "
            "module 'myproj.celery' has no attribute 'wrong'",
        ),
        ("myproj.tasks:import_rows", "'myproj.tasks:import_rows' is a"),
    ):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "taskcast", "serve", "--app", app, "--port", str(free_port()),
            env=project_env, cwd=EXAMPLES,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 2
        [line] = err.decode().splitlines()
        assert line.startswith(f"taskcast serve: {said}"), line
