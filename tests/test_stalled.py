"""Stalled tasks: a running task whose worker fell silent is flagged, and the flag clears
when the task runs again.

The service here calls a task stalled after 1 s without a heartbeat; the workers of this
test session beat every 0.2 s (``tests.env``). The worker tests use workers of their own,
on a queue of their own, so that killing them leaves the session's worker alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

from taskcast.app import create_app
from taskcast_celery import keys
from tests import env
from tests.support import (
    beat,
    demo_app,
    eventually,
    read_until_closed,
    recv_json,
    running_record,
    running_server,
    settings_with,
    worker_on,
    ws_connect,
)

STALL_AFTER = 1.0


@dataclasses.dataclass(frozen=True)
class Service:
    url: str
    queue: str


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    """The service with a 1 s stall threshold, dispatching to a queue of its own."""
    queue = f"test-stalled-{uuid.uuid4().hex[:8]}"
    settings = settings_with(stall_after=STALL_AFTER)
    async with running_server(
        create_app(settings=settings, celery_app=demo_app(queue=queue))
    ) as url:
        yield Service(url, queue)


async def start(service: Service, name: str, **params: Any) -> str:
    async with httpx.AsyncClient(base_url=service.url) as http:
        response = await http.post(f"/tasks/{name}", json=params)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def rest_status(service: Service, task_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=service.url) as http:
        response = await http.get(f"/tasks/{task_id}")
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


async def test_a_killed_worker_shows_stalled_then_redelivery_clears_it(service: Service) -> None:
    with worker_on(service.queue) as first:
        task_id = await start(service, "progress", total=6, step_seconds=0.3)
        async with ws_connect(service.url, f"/ws/tasks/{task_id}") as ws:
            seen = [await recv_json(ws, within=30)]
            while seen[-1]["state"] != "PROGRESS":
                seen.append(await recv_json(ws, within=30))
            assert first.process is not None
            # The whole worker, outright: no process is left to beat for the task.
            os.killpg(first.process.pid, signal.SIGKILL)
            first.process.wait(10)
            seen.append(await recv_json(ws, within=STALL_AFTER + 10))
            stalled = seen[-1]
            # Nothing changed but the flag: same record, now known to be orphaned.
            assert (stalled["state"], stalled["stalled"]) == ("PROGRESS", True)
            assert stalled["progress"]["current"] == seen[-2]["progress"]["current"]
            assert stalled["progress"]["eta_s"] is None
            assert (await rest_status(service, task_id))["stalled"] is True
            # A new worker takes the message over once its visibility timeout has passed.
            with worker_on(service.queue, TASKCAST_VISIBILITY_TIMEOUT="1"):
                rest, code = await read_until_closed(ws, within=60)
    assert code == 1000
    assert not any(status["stalled"] for status in seen[:-1])
    # Once it runs again it is not stalled: from its first new record to its final.
    assert rest and not any(status["stalled"] for status in rest)
    finals = [status for status in rest if status["final"]]
    assert [(s["state"], s["result"]) for s in finals] == [("SUCCESS", {"status": "completed"})]
    assert (await rest_status(service, task_id))["stalled"] is False


async def test_a_slow_task_that_keeps_its_heartbeat_is_never_stalled(
    service: Service, redis_client: redis.Redis
) -> None:
    with worker_on(service.queue):
        # Four times the threshold without a single record written while it runs.
        task_id = await start(service, "sleep", seconds=4 * STALL_AFTER)
        async with ws_connect(service.url, f"/ws/tasks/{task_id}") as ws:
            reader = asyncio.create_task(read_until_closed(ws, within=60))
            rest_statuses = []
            while not reader.done():
                rest_statuses.append(await rest_status(service, task_id))
                await asyncio.wait({reader}, timeout=0.2)
            statuses, code = await reader
    assert code == 1000
    assert "STARTED" in {status["state"] for status in statuses}
    assert statuses[-1]["state"] == "SUCCESS"
    assert not any(status["stalled"] for status in statuses)
    assert "STARTED" in {status["state"] for status in rest_statuses}
    assert not any(status["stalled"] for status in rest_statuses)
    # The task over, its heartbeat goes with it.
    heartbeat = keys.heartbeat_key(env.KEY_PREFIX, task_id)
    await eventually(lambda: asyncio.to_thread(redis_client.exists, heartbeat), lambda n: n == 0)


async def test_the_first_status_already_says_stalled_and_a_new_beat_clears_it(
    service: Service, redis_client: redis.Redis
) -> None:
    task_id = str(uuid.uuid4())
    running_record(redis_client, task_id)
    beat(redis_client, task_id, ago_s=10)
    assert (await rest_status(service, task_id))["stalled"] is True
    async with ws_connect(service.url, "/ws") as ws:
        await ws.send(f'{{"op": "subscribe", "task_id": "{task_id}"}}')
        first = await recv_json(ws)
        assert (first["state"], first["stalled"]) == ("PROGRESS", True)
        # The worker is heard again: the next poll clears the flag, record unchanged.
        beat(redis_client, task_id, ago_s=0)
        cleared = await recv_json(ws, within=5)
        assert (cleared["state"], cleared["stalled"]) == ("PROGRESS", False)
        assert cleared["progress"]["current"] == 2
    assert (await rest_status(service, task_id))["stalled"] is False


async def test_a_running_task_without_any_heartbeat_is_not_judged(
    service: Service, redis_client: redis.Redis
) -> None:
    # Run by a worker that does not beat (not taskcast's): no signal, no verdict.
    task_id = str(uuid.uuid4())
    running_record(redis_client, task_id)
    async with ws_connect(service.url, f"/ws/tasks/{task_id}") as ws:
        first = await recv_json(ws)
        assert (first["state"], first["stalled"]) == ("PROGRESS", False)
        # Polls enough to span twice the threshold (one each 0.5 s); a flip would be sent
        # during one of them, so before the answer to a ping sent after them.
        reads = await hub_reads(service)
        await eventually(lambda: hub_reads(service), lambda n: n >= reads + 4, within=10)
        await ws.send('{"op": "ping"}')
        assert (await recv_json(ws))["type"] == "pong"
    assert (await rest_status(service, task_id))["stalled"] is False


async def hub_reads(service: Service) -> float:
    """How many reads of watched tasks the service's hub has made so far."""
    async with httpx.AsyncClient(base_url=service.url) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("taskcast_hub_read_seconds_count"):
            return float(line.split()[-1])
    raise AssertionError("no taskcast_hub_read_seconds_count in /metrics")


async def test_queued_tasks_never_stall(service: Service, redis_client: redis.Redis) -> None:
    # Nobody runs a queued task: an old heartbeat (a previous run's) says nothing of it.
    task_id = str(uuid.uuid4())
    meta = f'{{"status": "SENT", "result": null, "task_id": "{task_id}"}}'
    redis_client.set(keys.task_meta_key(env.KEY_PREFIX, task_id), meta)
    beat(redis_client, task_id, ago_s=10)
    assert (await rest_status(service, task_id))["stalled"] is False


async def test_a_group_shows_which_members_are_stalled(
    service: Service, redis_client: redis.Redis
) -> None:
    group_id, running, queued = (str(uuid.uuid4()) for _ in range(3))
    members = [[[task_id, None], None] for task_id in (running, queued)]
    record = json.dumps({"result": [[group_id, None], members]})
    redis_client.set(keys.group_meta_key(env.KEY_PREFIX, group_id), record)
    running_record(redis_client, running)
    beat(redis_client, running, ago_s=10)
    queued_meta = f'{{"status": "SENT", "result": null, "task_id": "{queued}"}}'
    redis_client.set(keys.task_meta_key(env.KEY_PREFIX, queued), queued_meta)
    async with httpx.AsyncClient(base_url=service.url) as http:
        rest = (await http.get(f"/groups/{group_id}")).json()
    assert (rest["stalled"], rest["stalled_tasks"]) == (True, [running])
    async with ws_connect(service.url, f"/ws/groups/{group_id}") as ws:
        first = await recv_json(ws)
        assert (first["stalled"], first["stalled_tasks"], first["progress"]["eta_s"]) == (
            True, [running], None,
        )  # fmt: skip
        beat(redis_client, running, ago_s=0)
        cleared = await recv_json(ws, within=5)
        assert (cleared["stalled"], cleared["stalled_tasks"]) == (False, [])
        for task_id in (running, queued):
            done = f'{{"status": "SUCCESS", "result": 1, "task_id": "{task_id}"}}'
            redis_client.set(keys.task_meta_key(env.KEY_PREFIX, task_id), done)
        rest_of_it, code = await read_until_closed(ws, within=10)
    assert code == 1000
    assert rest_of_it[-1]["state"] == "SUCCESS"
