"""Flower, Celery's dashboard, sees the tasks that taskcast dispatches and its worker runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from taskcast.cli.devstack import free_port
from taskcast.cli.main import main
from tests.support import ROOT, WorkerProcess, eventually, final, submit, wait_for_state


@pytest.fixture
def flower_url() -> Iterator[str]:
    """A real Flower on a free port, with this session's environment (Redis, key prefix)."""
    port = free_port()
    # Its REST API answers without a login only when told to: here, on loopback, in a test.
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "taskcast_celery.demo", "flower",
         "--address=127.0.0.1", f"--port={port}", "--logging=warning"],
        env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


async def test_flower_shows_a_task_dispatched_through_taskcast(
    client: httpx.AsyncClient, worker: WorkerProcess, flower_url: str
) -> None:
    async with httpx.AsyncClient(base_url=flower_url, timeout=10) as flower:

        async def workers_seen() -> list[str]:
            try:
                response = await flower.get("/workers", params={"json": 1})
            except httpx.TransportError:
                return []  # not listening yet
            return [entry["hostname"] for entry in response.json()["data"]]

        # Flower learns everything from the worker's events, and an event sent before
        # its consumer listens is lost for good: wait until it has heard the worker's
        # heartbeat (every 2 s), so it is surely listening when the task runs.
        await eventually(workers_seen, lambda names: worker.hostname in names, within=30)

        task_id = await submit(client, "sleep", seconds=0.05)
        done = await wait_for_state(client, task_id, final)
        assert done["state"] == "SUCCESS"

        async def task_info() -> dict[str, Any]:
            response = await flower.get(f"/api/task/info/{task_id}")
            info: dict[str, Any] = response.json() if response.status_code == 200 else {}
            return info

        info = await eventually(task_info, lambda info: info.get("state") == "SUCCESS")
    assert info["name"] == "taskcast.sleep"
    assert info["worker"] == worker.hostname
    assert info["result"] == repr(done["result"])


def test_dev_with_flower_says_how_to_install_it_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "flower", None)
    assert main(["dev", "--flower"]) == 2
    assert "pip install 'taskcast[flower]'" in capsys.readouterr().err
