"""Publishing: SENT is recorded before the message leaves, and nothing leaks."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from celery import signals
from kombu.exceptions import OperationalError

from taskcast.app import create_app
from taskcast.cli.devstack import EmbeddedRedis, Supervisor, free_port
from taskcast.settings import Settings
from taskcast_celery import keys
from tests import env
from tests.support import (
    demo_app,
    eventually,
    final,
    running_server,
    service_process,
    session_app,
    wait_for_state,
)


def meta_key(task_id: str) -> str:
    return keys.task_meta_key(env.KEY_PREFIX, task_id)


def test_sent_is_recorded_before_the_message_is_published(redis_client: redis.Redis) -> None:
    """Read as the publish returns. To a queue no worker reads: a worker quick enough
    (the machine otherwise busy) wrote STARTED before this read, and failed the test."""
    seen_at_publish: dict[str, Any] = {}

    def after_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        task_id = (headers or {})["id"]
        seen_at_publish[task_id] = redis_client.get(meta_key(task_id))

    signals.after_task_publish.connect(after_publish, weak=False)
    try:
        task_id = str(uuid.uuid4())
        session_app().send_task(
            "taskcast.sleep", kwargs={"seconds": 0}, task_id=task_id, queue="taskcast-test-parked"
        )
    finally:
        signals.after_task_publish.disconnect(after_publish)
    record = json.loads(seen_at_publish[task_id])
    assert record["status"] == "SENT"
    assert record["name"] == "taskcast.sleep"
    assert 0 < redis_client.ttl(meta_key(task_id)) <= 86_400


def test_republishing_never_resets_a_live_task(redis_client: redis.Redis) -> None:
    """A retry re-publishes the same id; its STARTED/PROGRESS must survive."""
    task_id = str(uuid.uuid4())
    session_app().backend.store_result(task_id, {"current": 2, "total": 4}, "PROGRESS")
    # A queue no worker reads: the message just sits under this session's prefix.
    session_app().send_task("taskcast.sleep", task_id=task_id, queue="taskcast-test-parked")
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


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own: its command counters hold only what the service sends."""
    supervisor = Supervisor(os.environ)
    server = EmbeddedRedis(supervisor)
    server.start()
    try:
        yield server
    finally:
        supervisor.stop_all()
        server.cleanup()


async def test_dispatching_a_thousand_tasks_leaks_no_subscription(
    private_redis: EmbeddedRedis,
) -> None:
    """Stock apply_async would leave the service SUBSCRIBEd to 1,000 task channels."""
    env = {**os.environ, "TASKCAST_REDIS_URL": private_redis.url, "TASKCAST_KEY_PREFIX": ""}
    ids: list[str] = []
    limit = asyncio.Semaphore(50)
    async with service_process(env) as base, httpx.AsyncClient(base_url=base) as client:

        async def submit() -> None:
            async with limit:
                response = await client.post("/tasks/sleep", json={"seconds": 0})
                assert response.status_code == 202
                ids.append(response.json()["task_id"])

        await asyncio.gather(*(submit() for _ in range(1000)))
        assert len(set(ids)) == 1000
        private = redis.Redis.from_url(private_redis.url)
        try:
            channels = [keys.task_meta_key("", task_id) for task_id in ids]
            assert sum(count for _, count in private.pubsub_numsub(*channels)) == 0
            assert sum(int(entry.get("sub", 0)) for entry in private.client_list()) == 0
            # Celery 5.7 unsubscribes when an AsyncResult is garbage-collected, which can
            # hide a channel from NUMSUB; on this Redis only the service (which watches
            # nothing here) could have sent a SUBSCRIBE at all.
            stats = private.info("commandstats")
            assert "cmdstat_subscribe" not in stats, stats.get("cmdstat_subscribe")
        finally:
            private.close()


async def test_a_task_whose_record_cannot_be_written_is_not_published(
    redis_client: redis.Redis,
) -> None:
    """Broker up, result backend down: nothing may be queued that nobody could follow
    (it would read 404 for ever). The client gets 503, the producer an exception."""
    queue = f"taskcast-test-nobackend-{uuid.uuid4().hex[:8]}"
    split = demo_app(queue=queue, result_backend_url=f"redis://127.0.0.1:{free_port()}/0")
    queued = f"{env.KEY_PREFIX}{queue}"
    try:
        async with running_server(create_app(settings=Settings(), celery_app=split)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                refused = await http.post("/tasks/sleep", json={"seconds": 0})
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"] == "broker_unavailable"
                # Hosts and ports are the operator's to read, in the log: not a client's.
                assert "127.0.0.1" not in refused.text and "Error 111" not in refused.text
        # Raised as Celery raises a publish that failed: kombu's OperationalError.
        with pytest.raises(OperationalError, match="Connection refused"):
            split.send_task("taskcast.sleep", kwargs={"seconds": 0})
        assert redis_client.llen(queued) == 0
    finally:
        redis_client.delete(queued)
