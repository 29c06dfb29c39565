"""A worker dies mid-task (SIGKILL): the task runs again and its subscribers see it through.

Tasks are acknowledged late and rejected (requeued) when their worker is lost, so a
task is never lost with its worker. These tests use workers of their own, on a queue of
their own, so that killing them leaves the session's worker alone.
"""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import ClientConnection

from tests.support import (
    WorkerProcess,
    read_until_closed,
    recv_json,
    session_app,
    worker_on,
    ws_connect,
)


@pytest.fixture
def queue() -> str:
    return f"test-worker-loss-{uuid.uuid4().hex[:8]}"


def progress_task(queue: str, total: int) -> str:
    kwargs = {"total": total, "step_seconds": 0.1}
    return str(session_app().send_task("taskcast.progress", kwargs=kwargs, queue=queue).id)


async def until_running(ws: ClientConnection) -> list[dict[str, Any]]:
    """The statuses up to the first progress report: the task is running."""
    seen = [await recv_json(ws, within=30)]
    while seen[-1]["state"] != "PROGRESS":
        seen.append(await recv_json(ws, within=30))
    return seen


def pool_children(worker: WorkerProcess) -> list[psutil.Process]:
    assert worker.process is not None
    return psutil.Process(worker.process.pid).children()


async def test_a_killed_pool_process_is_replaced_and_the_task_runs_again(
    base_url: str, queue: str
) -> None:
    with worker_on(queue) as worker:
        task_id = progress_task(queue, total=8)
        async with ws_connect(base_url, f"/ws/tasks/{task_id}") as ws:
            seen = await until_running(ws)
            (child,) = pool_children(worker)
            child.send_signal(signal.SIGKILL)
            rest, code = await read_until_closed(ws, within=60)
    # The only process that ran it is dead: the success is a second run's.
    finals = [status for status in seen + rest if status["final"]]
    assert [(s["state"], s["result"]) for s in finals] == [("SUCCESS", {"status": "completed"})]
    assert code == 1000


async def test_a_worker_killed_outright_hands_its_task_to_the_next_worker(
    base_url: str, queue: str
) -> None:
    # A short visibility timeout, so the next worker takes the dead one's task at once.
    with worker_on(queue) as first:
        task_id = progress_task(queue, total=5)
        async with ws_connect(base_url, f"/ws/tasks/{task_id}") as ws:
            await until_running(ws)
            assert first.process is not None
            os.killpg(first.process.pid, signal.SIGKILL)
            first.process.wait(10)
            with worker_on(queue, TASKCAST_VISIBILITY_TIMEOUT="1"):
                rest, code = await read_until_closed(ws, within=60)
    finals = [s for s in rest if s["final"]]
    assert [(s["state"], s["result"]) for s in finals] == [("SUCCESS", {"status": "completed"})]
    assert code == 1000
