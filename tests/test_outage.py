"""Redis dies mid-task and comes back: every subscriber keeps its socket and gets the final."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from taskcast.cli.devstack import free_port, redis_answers, redis_server_binary
from taskcast_celery import keys
from taskcast_celery.demo.settings import DemoSettings
from tests.support import (
    WorkerProcess,
    eventually,
    read_until_closed,
    recv_json,
    service_process,
    submit,
    ws_connect,
)


class PrivateRedis:
    """A redis-server of this test's own, which it may kill and start again."""

    def __init__(self, persistent: bool = False) -> None:
        # Persistent: every write is on disk before it is acknowledged (AOF, fsync
        # always), so a SIGKILL loses nothing, as a production Redis restart would not.
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = tempfile.mkdtemp(prefix="taskcast-outage-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        aof = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        argv = [
            redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", *aof, "--dir", self.workdir, "--loglevel", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def private_redis(request: pytest.FixtureRequest) -> Iterator[PrivateRedis]:
    """A private Redis; ``@pytest.mark.parametrize("private_redis", [True], indirect=True)``
    makes it persistent (its records survive a kill)."""
    server = PrivateRedis(persistent=getattr(request, "param", False))
    server.start()
    try:
        assert asyncio.run(_wait_sync(lambda: redis_answers(server.url)))
        yield server
    finally:
        server.kill()
        shutil.rmtree(server.workdir, ignore_errors=True)


async def _wait_sync(check: Any) -> bool:
    return bool(await eventually(lambda: asyncio.to_thread(check), bool, within=10))


async def test_final_state_survives_a_redis_restart(private_redis: PrivateRedis) -> None:
    env = {**os.environ, "TASKCAST_REDIS_URL": private_redis.url, "TASKCAST_KEY_PREFIX": ""}
    worker = WorkerProcess(concurrency=1, env=env)
    worker.start()
    try:
        async with (
            service_process(env) as base,
            httpx.AsyncClient(base_url=base, timeout=5) as http,
        ):
            task_id = await submit(http, "progress", total=40, step_seconds=0.1)
            async with contextlib.AsyncExitStack() as stack:
                singles = [
                    await stack.enter_async_context(ws_connect(base, f"/ws/tasks/{task_id}"))
                    for _ in range(3)
                ]
                multi = await stack.enter_async_context(ws_connect(base, "/ws"))
                await multi.send(json.dumps({"op": "subscribe", "task_id": task_id}))
                clients = [*singles, multi]
                seen: list[list[dict[str, Any]]] = [[] for _ in clients]
                for ws, messages in zip(clients, seen, strict=True):
                    while not messages or messages[-1]["state"] != "PROGRESS":
                        messages.append(await recv_json(ws, within=20))

                private_redis.kill()

                async def readiness() -> int:
                    return (await http.get("/readyz")).status_code

                await eventually(readiness, lambda code: code == 503, within=20)
                private_redis.start()
                await eventually(readiness, lambda code: code == 200, within=30)

                for ws, messages in zip(singles, seen[:3], strict=True):
                    rest, code = await read_until_closed(ws, within=30)
                    messages.extend(rest)
                    assert code == 1000
                async with asyncio.timeout(30):
                    while not seen[-1][-1]["final"]:
                        seen[-1].append(await recv_json(multi, within=30))
                # The multiplexed socket is still open and serving.
                await multi.send('{"op": "ping"}')
                assert await recv_json(multi) == {"type": "pong"}
    finally:
        worker.stop()
    for messages in seen:
        finals = [m for m in messages if m["final"]]
        assert len(finals) == 1 and messages[-1] is finals[0]
        assert finals[0]["state"] == "SUCCESS"
        currents = [m["progress"]["current"] for m in messages if m["state"] == "PROGRESS"]
        assert currents == sorted(currents)


@pytest.mark.parametrize("private_redis", [True], indirect=True)
async def test_readiness_holds_once_redis_is_back(private_redis: PrivateRedis) -> None:
    """Once /readyz says ready again after an outage, it stays so: no 503 in the seconds
    after (it flapped: 200, 503, 200, as stale pooled connections failed one by one)."""
    env = {**os.environ, "TASKCAST_REDIS_URL": private_redis.url, "TASKCAST_KEY_PREFIX": ""}
    async with (
        service_process(env) as base,
        httpx.AsyncClient(base_url=base, timeout=5) as http,
    ):
        # Pooled connections in use before the outage: running tasks watched (the hub's
        # reads and its pub/sub), and reads many at once.
        client = redis.Redis.from_url(private_redis.url)
        running = [str(uuid.uuid4()) for _ in range(5)]
        for task_id in running:
            meta = {"status": "PROGRESS", "result": {"current": 1, "total": 5}}
            client.set(keys.task_meta_key("", task_id), json.dumps(meta))
        async with ws_connect(base, "/ws") as ws:
            for task_id in running:
                await ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
                assert (await recv_json(ws))["state"] == "PROGRESS"
            reads = await asyncio.gather(*(http.get(f"/tasks/{t}") for t in running * 6))
            assert {read.status_code for read in reads} == {200}

            async def readiness() -> int:
                return (await http.get("/readyz")).status_code

            private_redis.kill()
            await eventually(readiness, lambda code: code == 503, within=20)
            private_redis.start()
            await eventually(readiness, lambda code: code == 200, within=30)
            probes = []
            for _ in range(100):
                probes.append(await readiness())
                reads = await asyncio.gather(*(http.get(f"/tasks/{t}") for t in running))
                probes.extend(read.status_code for read in reads)
    client.close()
    # Ready, and every read answered, from the first 200 on: nothing failed again.
    assert probes == [200] * len(probes), probes


@pytest.mark.parametrize("private_redis", [True], indirect=True)
async def test_a_running_task_rides_out_a_redis_outage_longer_than_celery_waits(
    private_redis: PrivateRedis,
) -> None:
    """Redis gone for 25 s while tasks run (a restart, a failover): Celery alone gives a
    state write up after about 20 s, failing the task. The tasks wait, and succeed."""
    # Imported here, not at collection: building it reads the environment (tests/env.py).
    from taskcast_celery.demo.celery import create_demo_app

    env = {**os.environ, "TASKCAST_REDIS_URL": private_redis.url, "TASKCAST_KEY_PREFIX": ""}
    app = create_demo_app(DemoSettings(redis_url=private_redis.url, key_prefix=""))
    client = redis.Redis.from_url(private_redis.url)

    def state(task_id: str) -> str | None:
        try:
            raw = client.get(keys.task_meta_key("", task_id))
        except redis.ConnectionError:
            return "unreachable"  # this client's connection, from before the restart
        return None if raw is None else str(json.loads(raw)["status"])

    worker = WorkerProcess(concurrency=2, env=env)
    worker.start()
    try:
        tasks = [
            app.send_task("taskcast.progress", kwargs={"total": 40, "step_seconds": 0.1}).id
            for _ in range(2)
        ]
        await eventually(
            lambda: asyncio.to_thread(lambda: [state(t) for t in tasks]),
            lambda states: states == ["PROGRESS", "PROGRESS"],
            within=30,
        )
        private_redis.kill()
        # The outage itself: a stretch of time, which the test is about.
        await asyncio.sleep(25)
        private_redis.start()
        ended = await eventually(
            lambda: asyncio.to_thread(lambda: [state(t) for t in tasks]),
            lambda states: all(s in ("SUCCESS", "FAILURE") for s in states),
            within=60,
        )
    finally:
        worker.stop()
        client.close()
    assert ended == ["SUCCESS", "SUCCESS"]
