"""DELETE /tasks/{id}: a queued task never runs, a running one is stopped."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import redis

from taskcast_celery import keys
from tests import env
from tests.support import WorkerProcess, eventually, final, session_app, submit, wait_for_state


def active_ids(worker: WorkerProcess) -> set[str]:
    replies = session_app().control.inspect(destination=[worker.hostname], timeout=1).active() or {}
    return {task["id"] for tasks in replies.values() for task in tasks}


async def test_revoking_a_running_task_stops_it(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    task_id = await submit(client, "progress", total=200, step_seconds=0.05)
    await wait_for_state(client, task_id, lambda s: s["state"] == "PROGRESS")
    heartbeat = keys.heartbeat_key(env.KEY_PREFIX, task_id)
    beats = redis.Redis.from_url(env.REDIS_URL)
    assert beats.exists(heartbeat)  # the worker beats while the task runs
    response = await client.delete(f"/tasks/{task_id}")
    assert response.status_code == 202
    assert response.json()["task_id"] == task_id
    done = await wait_for_state(client, task_id, final)
    assert done["state"] == "REVOKED"
    assert done["error"]["type"] == "TaskRevokedError"
    # Stopped, not merely relabelled: the worker no longer runs it.
    await eventually(lambda: asyncio.to_thread(active_ids, worker), lambda ids: task_id not in ids)
    assert (await client.get(f"/tasks/{task_id}")).json()["state"] == "REVOKED"
    # Killed before task_postrun could remove it: the cancel did, and nothing wrote it again.
    assert not beats.exists(heartbeat)
    beats.close()


async def test_revoking_a_queued_task_means_it_never_runs(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    listener = redis.asyncio.Redis.from_url(env.REDIS_URL).pubsub()
    # Occupy every worker process, so the next task waits in the queue.
    blockers = [await submit(client, "sleep", seconds=30) for _ in range(worker.concurrency)]
    for blocker in blockers:
        await wait_for_state(client, blocker, lambda s: s["state"] == "STARTED")
    victim = str(uuid.uuid4())
    await listener.subscribe(keys.task_meta_key(env.KEY_PREFIX, victim))
    try:
        session_app().send_task("taskcast.sleep", kwargs={"seconds": 0}, task_id=victim)
        assert (await client.get(f"/tasks/{victim}")).json()["state"] == "SENT"
        assert (await client.delete(f"/tasks/{victim}")).status_code == 202
        assert (await client.get(f"/tasks/{victim}")).json()["state"] == "REVOKED"

        for blocker in blockers:
            assert (await client.delete(f"/tasks/{blocker}")).status_code == 202
        # The queue is FIFO: once a task sent after the victim has run, the worker has
        # taken the victim off the queue too.
        sentinel = await submit(client, "sleep", seconds=0)
        assert (await wait_for_state(client, sentinel, final))["state"] == "SUCCESS"

        seen = []
        while (message := await listener.get_message(timeout=0.05)) is not None:
            if message["type"] == "message":
                seen.append(json.loads(message["data"])["status"])
    finally:
        await listener.aclose()
    assert "STARTED" not in seen
    assert seen[0] == "SENT"
    assert (await client.get(f"/tasks/{victim}")).json()["state"] == "REVOKED"


async def test_a_worker_that_missed_the_revoke_still_refuses_the_task(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The revoked marker covers workers that start after the broadcast: the worker
    treats the task as Celery treats any revoked one, and never runs it."""
    task_id = str(uuid.uuid4())
    queue = f"taskcast-test-late-{uuid.uuid4().hex[:8]}"
    session_app().send_task("taskcast.sleep", kwargs={"seconds": 0}, task_id=task_id, queue=queue)
    assert (await client.delete(f"/tasks/{task_id}")).status_code == 202
    # The record says REVOKED already and can no longer change, so only the worker's own
    # account shows whether the task body ran.
    log = tmp_path / "late-worker.log"
    late = WorkerProcess(concurrency=1, queues=queue, logfile=str(log))
    late.start()
    try:
        outcome = await eventually(
            lambda: asyncio.to_thread(lambda: log.read_text() if log.exists() else ""),
            lambda text: (
                f"revoked task: taskcast.sleep[{task_id}]" in text
                or f"[{task_id}] succeeded" in text
            ),
            within=30,
        )
    finally:
        late.stop()
    assert f"Discarding revoked task: taskcast.sleep[{task_id}]" in outcome
    assert f"[{task_id}] succeeded" not in outcome
    assert (await client.get(f"/tasks/{task_id}")).json()["state"] == "REVOKED"


async def test_cancel_errors(client: httpx.AsyncClient) -> None:
    unknown = await client.delete(f"/tasks/{uuid.uuid4()}")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_task")
    malformed = await client.delete("/tasks/123")
    assert (malformed.status_code, malformed.json()["error"]) == (422, "invalid_task_id")
    task_id = await submit(client, "sleep", seconds=0)
    await wait_for_state(client, task_id, final)
    again = await client.delete(f"/tasks/{task_id}")
    assert again.status_code == 409
    assert again.json() == {
        "error": "already_final",
        "detail": f"task {task_id} already ended SUCCESS",
    }
