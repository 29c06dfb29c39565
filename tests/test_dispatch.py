"""Publishing: SENT is recorded before the message leaves, and nothing leaks."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import redis
from celery import signals

from tests import env
from tests.support import eventually, final, wait_for_state
from workers import keys
from workers.app import celery_app


def meta_key(task_id: str) -> str:
    return keys.task_meta_key(env.KEY_PREFIX, task_id)


def subscribe_calls(redis_client: redis.Redis) -> int:
    stats = redis_client.info("commandstats").get("cmdstat_subscribe", {})
    return int(stats.get("calls", 0))


def test_sent_is_recorded_before_the_message_is_published(
    redis_client: redis.Redis, worker: object
) -> None:
    seen_at_publish: dict[str, Any] = {}

    def after_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        task_id = (headers or {})["id"]
        seen_at_publish[task_id] = redis_client.get(meta_key(task_id))

    signals.after_task_publish.connect(after_publish, weak=False)
    try:
        task_id = str(uuid.uuid4())
        celery_app.send_task("taskcast.sleep", kwargs={"seconds": 0}, task_id=task_id)
    finally:
        signals.after_task_publish.disconnect(after_publish)
    record = json.loads(seen_at_publish[task_id])
    assert record["status"] == "SENT"
    assert record["name"] == "taskcast.sleep"
    assert 0 < redis_client.ttl(meta_key(task_id)) <= 86_400


def test_republishing_never_resets_a_live_task(redis_client: redis.Redis) -> None:
    """A retry re-publishes the same id; its STARTED/PROGRESS must survive."""
    task_id = str(uuid.uuid4())
    celery_app.backend.store_result(task_id, {"current": 2, "total": 4}, "PROGRESS")
    # A queue no worker reads: the message just sits under this session's prefix.
    celery_app.send_task("taskcast.sleep", task_id=task_id, queue="taskcast-test-parked")
    assert json.loads(redis_client.get(meta_key(task_id)))["status"] == "PROGRESS"


async def test_fast_tasks_never_step_back_to_sent(
    client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    """Every state a fast worker writes follows SENT; none is overwritten by it."""
    pubsub = redis.asyncio.Redis.from_url(env.REDIS_URL).pubsub()
    await pubsub.psubscribe(f"{env.KEY_PREFIX}{keys.TASK_META}*")
    try:
        responses = await asyncio.gather(
            *(
                client.post("/tasks/progress", json={"total": 1, "step_seconds": 0})
                for _ in range(20)
            )
        )
        ids = [response.json()["task_id"] for response in responses]
        for task_id in ids:
            assert (await wait_for_state(client, task_id, final))["state"] == "SUCCESS"
        history: dict[str, list[str]] = {task_id: [] for task_id in ids}

        async def drain() -> bool:
            while (message := await pubsub.get_message(timeout=0.01)) is not None:
                if message["type"] == "pmessage":
                    record = json.loads(message["data"])
                    if record["task_id"] in history:
                        history[record["task_id"]].append(record["status"])
            return all(states and states[-1] == "SUCCESS" for states in history.values())

        await eventually(drain, bool)
    finally:
        await pubsub.aclose()
    for states in history.values():
        assert states[0] == "SENT"
        assert "SENT" not in states[1:]
        assert states[-3:] == ["STARTED", "PROGRESS", "SUCCESS"]


async def test_dispatching_a_thousand_tasks_leaks_no_subscription(
    client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    """Stock apply_async would leave the service SUBSCRIBEd to 1,000 task channels."""
    ids: list[str] = []
    limit = asyncio.Semaphore(50)
    subscribes_before = subscribe_calls(redis_client)

    async def submit() -> None:
        async with limit:
            response = await client.post("/tasks/sleep", json={"seconds": 0})
            assert response.status_code == 202
            ids.append(response.json()["task_id"])

    await asyncio.gather(*(submit() for _ in range(1000)))
    assert len(set(ids)) == 1000
    counts = redis_client.pubsub_numsub(*(meta_key(task_id) for task_id in ids))
    assert sum(count for _, count in counts) == 0
    # Celery 5.7 unsubscribes when the AsyncResult is garbage-collected, which hides a
    # held channel from NUMSUB; the SUBSCRIBE traffic itself shows whether it happened.
    assert subscribe_calls(redis_client) - subscribes_before < 100
    # Whatever does hold channels (the worker's broadcast queues) holds far fewer than 1,000.
    held = sum(int(entry.get("sub", 0)) for entry in redis_client.client_list())
    assert held < 50
    # Don't leave the worker 1,000 messages to chew through during later tests.
    celery_app.control.purge()
