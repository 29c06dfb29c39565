"""`taskcast dev` on a machine with no Redis: it embeds one, serves, and cleans up."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from asyncio.subprocess import Process

import httpx
import psutil

from taskcast.cli.devstack import free_port
from tests.support import ROOT, dev_banner, eventually, final, read_output, wait_for_state


async def test_dev_runs_everything_and_leaves_no_process_behind() -> None:
    port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKCAST_", "MAILTRAP_"))}
    taskcast = os.path.join(os.path.dirname(sys.executable), "taskcast")
    process = await asyncio.create_subprocess_exec(
        taskcast, "dev", "--port", str(port), "--flower", "--flower-port", str(flower_port),
        # Nothing listens here, so dev must start its embedded Redis.
        "--local-redis", f"redis://127.0.0.1:{free_port()}/0",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, reader = read_output(process)
    descendants: list[psutil.Process] = []
    try:
        text = await dev_banner(process, output)
        assert "taskcast dev is ready" in text, text
        assert "(embedded, nothing kept on disk)" in text
        assert f"http://127.0.0.1:{port}/tasks/{{name}}" in text
        assert f"E-mail     http://127.0.0.1:{port}/dev/outbox" in text
        assert f"Flower     http://127.0.0.1:{flower_port}" in text

        descendants = psutil.Process(process.pid).children(recursive=True)
        names = " ".join(" ".join(child.cmdline()) for child in descendants)
        assert "redis-server" in names and "celery" in names and "-m taskcast serve" in names
        assert "taskcast_celery.demo flower" in names

        async with httpx.AsyncClient(timeout=10) as flower:
            # The banner waits for Flower's health check too.
            response = await flower.get(f"http://127.0.0.1:{flower_port}/healthcheck")
            assert (response.status_code, response.text) == (200, "OK")

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            # Served on loopback: no other host name (a DNS-rebinding page's) is answered.
            rebound = await http.get("/healthz", headers={"Host": "evil.example"})
            assert (rebound.status_code, rebound.json()["error"]) == (400, "invalid_host")
            response = await http.post("/tasks/progress", json={"total": 3, "step_seconds": 0.05})
            assert response.status_code == 202
            done = await wait_for_state(http, response.json()["task_id"], final, within=30)
            assert done["state"] == "SUCCESS"
            assert done["progress"]["percent"] == 100.0

            # No Mailtrap token: the e-mail lands in the dev outbox.
            response = await http.post(
                "/tasks/email", json={"to": "ada@example.com", "data": {"n": 1}}
            )
            task_id = response.json()["task_id"]
            sent = await wait_for_state(http, task_id, final, within=30)
            assert sent["state"] == "SUCCESS", sent
            [entry] = (await http.get("/dev/outbox")).json()["messages"]
            assert (entry["task_id"], entry["to"]) == (task_id, "ada@example.com")
            assert sent["result"]["message_ids"] == [entry["message_id"]]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=30)
        await reader
    assert code == 0
    assert descendants
    _, alive = psutil.wait_procs(descendants, timeout=5)
    assert not alive, [proc.cmdline() for proc in alive]


async def start_dev(*args: str, env: dict[str, str] | None = None) -> tuple[Process, list[str]]:
    """``taskcast dev`` with ``args``; its output, read as it comes. It never uses a Redis
    that answers on 127.0.0.1:6379 (a developer's own): nothing listens where it looks."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TASKCAST_", "MAILTRAP_"))}
    unused = f"redis://127.0.0.1:{free_port()}/0"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskcast", "dev", "--local-redis", unused, *args,
        env={**clean, **(env or {})}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output: list[str] = []

    async def pump() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            output.append(line.decode(errors="replace"))

    asyncio.get_running_loop().create_task(pump())
    return process, output


async def test_dev_is_ready_only_once_its_worker_is_and_stops_on_signals_at_once() -> None:
    port = free_port()
    process, output = await start_dev("--port", str(port), "--concurrency", "1")
    try:
        text = await eventually(
            lambda: "".join(output),
            lambda text: "taskcast dev is ready" in text or process.returncode is not None,
            within=60,
        )
        # The worker said it was ready (Celery's own line) before dev did.
        worker_ready = re.search(r"taskcast-dev-\d+@\S+ ready\.", text)
        assert worker_ready is not None, text
        assert worker_ready.start() < text.index("taskcast dev is ready")
    finally:
        # Several signals at once, as `timeout` and uv send them: it stops, every time.
        for _ in range(5):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


async def test_dev_with_a_dead_redis_says_so_and_stops() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    process, output = await start_dev("--port", str(free_port()), env={"TASKCAST_REDIS_URL": dead})
    assert await asyncio.wait_for(process.wait(), timeout=30) == 1
    text = await eventually(lambda: "".join(output), bool)
    assert "taskcast dev is ready" not in text
    assert (
        f"Redis at 127.0.0.1:{dead.rsplit(':', 1)[1]} (from TASKCAST_REDIS_URL) does not answer"
        in text
    )
