"""The broker's Redis dies under running tasks (SIGKILL) and comes back on the same port,
as a restart or a failover does: running tasks finish once, their watchers see one final,
and the worker stays up and quiet (tests/test_outage.py loses the whole Redis under
prefork workers; tests/test_sentinel.py fails a master over).

Workers here run as a user's would, with gossip on (the suite's other workers run
``--without-gossip``): its close on a lost broker is what Celery logged as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskcast.app import create_app
from taskcast.cli.devstack import free_port, redis_answers, redis_server_binary, wait_until
from taskcast_celery import keys
from tests import env
from tests.support import (
    Published,
    WorkerProcess,
    demo_app,
    eventually,
    read_until_closed,
    recv_json,
    running_server,
    settings_with,
    ws_connect,
)


class KillableRedis:
    """A redis-server of the test's own that it may SIGKILL and start again on the same
    port. Persistent (AOF, fsync always), as a production broker is (or its replica): the
    queue and the unacknowledged messages survive, so a task the worker gave up on would
    be delivered again, which is what the tests look for."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = tempfile.mkdtemp(prefix="taskcast-broker-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--dir", self.workdir, "--loglevel", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        assert wait_until(lambda: redis_answers(self.url), timeout=10), "Redis did not start"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def killable_redis() -> Iterator[KillableRedis]:
    server = KillableRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(server.workdir, ignore_errors=True)


class GossipingWorker(WorkerProcess):
    """A worker started as a user starts one: gossip on, the pool given, its INFO log in
    ``logfile`` (which says what it received, ran and logged)."""

    def __init__(self, pool: str, logfile: Path, **options: Any) -> None:
        super().__init__(logfile=str(logfile), **options)
        self.pool = pool
        self.log = logfile

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "--pool", self.pool, "--concurrency", str(self.concurrency),
            "--hostname", self.hostname, "--without-mingle",
            "--logfile", str(self.log), "--loglevel", "INFO",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, env=self.env, cwd=self.cwd, start_new_session=True)

    def text(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log.read_text()
        return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def until_logged(self, pattern: str, within: float = 30) -> str:
        return await eventually(
            lambda: self.text(), lambda text: re.search(pattern, text) is not None, within
        )


@contextlib.contextmanager
def running(worker: GossipingWorker) -> Iterator[GossipingWorker]:
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def assert_quiet(log: str) -> None:
    """No Celery 6 notice (the app chose, through install), and no gossip traceback."""
    assert "CPendingDeprecationWarning" not in log, log
    assert "worker_cancel_long_running_tasks_on_connection_loss" not in log, log
    assert "Error on restarting Gossip" not in log, log
    assert "Traceback" not in log, log


async def lose_the_broker(broker: KillableRedis, worker: GossipingWorker) -> None:
    """SIGKILL the broker, wait until the worker knows, and start it again."""
    broker.kill()
    await worker.until_logged("Connection to broker lost")
    await asyncio.to_thread(broker.start)


async def test_a_task_running_when_the_broker_is_lost_finishes_once(
    killable_redis: KillableRedis, tmp_path: Path
) -> None:
    # The broker alone is lost: records stay on the session's Redis, under its prefix.
    app = demo_app(broker_url=killable_redis.url)
    worker = GossipingWorker(
        pool="prefork",
        logfile=tmp_path / "worker.log",
        concurrency=1,
        env={**os.environ, "TASKCAST_BROKER_URL": killable_redis.url},
    )
    with running(worker):
        await worker.until_logged(r" ready\.")
        async with running_server(create_app(app, settings=settings_with())) as url:
            task_id = str(uuid.uuid4())
            async with Published(env.REDIS_URL, env.KEY_PREFIX, task_id) as published:
                app.send_task(
                    "taskcast.progress",
                    kwargs={"total": 30, "step_seconds": 0.1},
                    task_id=task_id,
                )
                async with ws_connect(url, f"/ws/tasks/{task_id}") as ws:
                    seen = [await recv_json(ws, within=30)]
                    while seen[-1]["state"] != "PROGRESS":
                        seen.append(await recv_json(ws, within=30))
                    await lose_the_broker(killable_redis, worker)
                    rest, code = await read_until_closed(ws, within=40)
                records = await published.until_final(within=10)
            # One process: a second delivery of the task (queued again when the broker
            # came back) would run before this one ends.
            after = app.send_task("taskcast.progress", kwargs={"total": 1, "step_seconds": 0})
            async with ws_connect(url, f"/ws/tasks/{after.id}") as ws:
                after_statuses, _ = await read_until_closed(ws, within=30)
        log = worker.text()
        assert worker.alive()
    statuses = seen + rest
    finals = [s for s in statuses if s["final"]]
    assert [(s["state"], s["result"]) for s in finals] == [("SUCCESS", {"status": "completed"})]
    assert code == 1000 and statuses[-1] is finals[0]
    currents = [s["progress"]["current"] for s in statuses if s["state"] == "PROGRESS"]
    assert currents == sorted(currents), currents
    assert after_statuses[-1]["state"] == "SUCCESS"
    # Run once: one start recorded, one delivery, one end (none cancelled, none again).
    assert [r["status"] for r in records].count("STARTED") == 1, records
    assert log.count(f"taskcast.progress[{task_id}] received") == 1, log
    assert log.count(f"taskcast.progress[{task_id}] succeeded") == 1, log
    assert "Connection to broker lost" in log and log.count("Connected to redis://") == 2, log
    assert_quiet(log)


async def test_a_threads_pool_worker_rides_out_a_redis_outage(
    killable_redis: KillableRedis, tmp_path: Path
) -> None:
    """The broker and the result backend on one Redis, SIGKILLed under ten running tasks
    of a threads pool (docs/operations.md suggests it for tasks that wait on I/O): the
    tasks end, the worker stays up, and a task sent once Redis is back runs."""
    url = killable_redis.url
    app = demo_app(redis_url=url, broker_url=url, result_backend_url=url, key_prefix="")
    client = redis.Redis.from_url(url)

    def summary(meta: dict[str, Any]) -> str:
        # A failure with its reason, for the message of a test that fails.
        status = str(meta["status"])
        return f"FAILURE {meta['result']}" if status == "FAILURE" else status

    def states(task_ids: list[str]) -> list[str | None]:
        try:
            raws = [client.get(keys.task_meta_key("", task_id)) for task_id in task_ids]
        except redis.ConnectionError:
            return ["unreachable"]  # this client's connection, from before the restart
        return [None if raw is None else summary(json.loads(raw)) for raw in raws]

    worker = GossipingWorker(
        pool="threads",
        logfile=tmp_path / "worker.log",
        concurrency=10,
        env={**os.environ, "TASKCAST_REDIS_URL": url, "TASKCAST_KEY_PREFIX": ""},
    )
    try:
        with running(worker):
            await worker.until_logged(r" ready\.")
            tasks = [
                app.send_task("taskcast.progress", kwargs={"total": 30, "step_seconds": 0.1}).id
                for _ in range(10)
            ]
            await eventually(
                lambda: asyncio.to_thread(states, tasks),
                lambda found: found == ["PROGRESS"] * 10,
                within=30,
            )
            await lose_the_broker(killable_redis, worker)
            ended = await eventually(
                lambda: asyncio.to_thread(states, tasks),
                lambda found: (
                    all(s == "SUCCESS" or str(s).startswith("FAILURE") for s in found)
                    or not worker.alive()
                ),
                within=40,
            )
            assert worker.alive(), worker.text()
            after = app.send_task("taskcast.progress", kwargs={"total": 1, "step_seconds": 0}).id
            await eventually(
                lambda: asyncio.to_thread(states, [after]),
                lambda found: found == ["SUCCESS"],
                within=30,
            )
            log = worker.text()
            assert worker.alive(), log
    finally:
        client.close()
    assert ended == ["SUCCESS"] * 10
    assert "Unrecoverable error" not in log, log
    assert_quiet(log)
