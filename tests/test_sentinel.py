"""Redis Sentinel: the broker, the result backend and the service's own reads on a master
that three Sentinels watch (tests/sentinel.py), and a failover under live streams: the
master SIGKILLed mid-task, the replica promoted, every task finishing and every
subscriber getting exactly one final."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from celery import Celery
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from taskcast.app import create_app
from taskcast.live.hub import Hub
from taskcast.redis_pool import connect
from taskcast.served import ServedApp
from tests.sentinel import MASTER_NAME, SentinelCluster
from tests.support import (
    WorkerProcess,
    demo_app,
    eventually,
    running_server,
    settings_with,
    ws_connect,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster() as running:
        yield running


def on_sentinels(cluster: SentinelCluster) -> dict[str, str]:
    """The demo app's settings for a Redis its Sentinels name."""
    return {
        "TASKCAST_REDIS_URL": cluster.url,
        "TASKCAST_BROKER_URL": cluster.url,
        "TASKCAST_RESULT_BACKEND_URL": cluster.url,
        "TASKCAST_REDIS_SENTINEL_MASTER": MASTER_NAME,
    }


@contextlib.asynccontextmanager
async def service_on(cluster: SentinelCluster) -> AsyncIterator[tuple[str, Celery, Hub]]:
    """A worker and a served demo app, both on the Sentinels' master."""
    settings = on_sentinels(cluster)
    app = demo_app(
        redis_url=cluster.url,
        broker_url=cluster.url,
        result_backend_url=cluster.url,
        redis_sentinel_master=MASTER_NAME,
    )
    worker = WorkerProcess(concurrency=3, env={**os.environ, **settings})
    worker.start()
    try:
        await eventually(
            lambda: asyncio.to_thread(app.control.ping, destination=[worker.hostname], timeout=0.5),
            bool,
            within=30,
        )
        served = create_app(settings=settings_with(), celery_app=app)
        async with running_server(served) as url:
            yield url, app, served.state.taskcast.hub
    finally:
        await asyncio.to_thread(worker.stop)


async def test_tasks_run_and_stream_on_a_master_that_sentinels_name(
    cluster: SentinelCluster,
) -> None:
    async with service_on(cluster) as (url, _, _), httpx.AsyncClient(base_url=url) as http:
        reply = await http.post("/tasks/progress", json={"total": 3, "step_seconds": 0.05})
        task_id = reply.json()["task_id"]
        async with ws_connect(url, f"/ws/tasks/{task_id}") as ws:
            messages = [json.loads(raw) async for raw in ws]
        assert messages[-1]["state"] == "SUCCESS"
        assert (await http.get("/readyz")).status_code == 200


async def test_closing_the_client_closes_its_sentinel_connections(
    cluster: SentinelCluster,
) -> None:
    redis = connect(
        ServedApp(
            celery=Celery(),
            name="sentinels",
            redis_url=cluster.url,
            key_prefix="",
            result_expires=0,
            heartbeat_interval=1.0,
            tasks={},
            sentinel_master=MASTER_NAME,
        )
    )
    await redis.ping()
    sentinels = redis.connection_pool.sentinel_manager.sentinels
    asked = [c for s in sentinels for c in s.connection_pool._available_connections]
    assert asked, "the master was found through no Sentinel"
    await redis.aclose()
    # Open ones would be left for the collector, which warns (an error in this suite).
    assert not [c for c in asked if c.is_connected]


async def follow(ws: ClientConnection, frames: list[tuple[float, dict[str, Any]]]) -> None:
    """Every message until the server closes, with the time it came."""
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            frames.append((time.monotonic(), json.loads(raw)))


async def test_a_failover_mid_task_loses_no_final(cluster: SentinelCluster) -> None:
    async with service_on(cluster) as (url, _, _), httpx.AsyncClient(base_url=url) as http:
        task_ids = []
        for _ in range(3):
            reply = await http.post("/tasks/progress", json={"total": 40, "step_seconds": 0.15})
            task_ids.append(reply.json()["task_id"])
        frames: dict[str, list[tuple[float, dict[str, Any]]]] = {t: [] for t in task_ids}
        async with contextlib.AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(ws_connect(url, f"/ws/tasks/{task_id}"))
                for task_id in task_ids
            ]
            following = [
                asyncio.create_task(follow(ws, frames[task_id]))
                for ws, task_id in zip(sockets, task_ids, strict=True)
            ]

            def running() -> bool:
                return all(
                    any(frame["state"] == "PROGRESS" for _, frame in frames[t]) for t in task_ids
                )

            await eventually(running, bool, within=30)
            old_master = cluster.kill_master()
            killed_at = time.monotonic()
            # REST meanwhile, as a poller would ask: how many answers fail, and for how long.
            answers: list[tuple[float, int]] = []

            async def poll() -> None:
                while not all(following_task.done() for following_task in following):
                    response = await http.get(f"/tasks/{task_ids[0]}")
                    answers.append((time.monotonic() - killed_at, response.status_code))
                    await asyncio.sleep(0.05)

            polling = asyncio.create_task(poll())
            async with asyncio.timeout(60):
                await asyncio.gather(*following)
            await polling
        new_master = cluster.master()
    assert new_master not in (None, old_master)
    for task_id in task_ids:
        statuses = [frame for _, frame in frames[task_id]]
        assert [s["final"] for s in statuses].count(True) == 1, statuses[-3:]
        assert statuses[-1]["state"] == "SUCCESS"
        currents = [s["progress"]["current"] for s in statuses if s["state"] == "PROGRESS"]
        assert currents == sorted(currents), currents
    first_after = min(
        at - killed_at for task_id in task_ids for at, _ in frames[task_id] if at > killed_at
    )
    failed = [(round(at, 2), code) for at, code in answers if code != 200]
    print(
        f"failover: first frame {first_after:.2f} s after the kill; REST answers "
        f"{len(answers)}, failed {len(failed)}: {failed[:3]}...{failed[-3:]}"
    )
    assert answers[-1][1] == 200
