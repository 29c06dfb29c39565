"""A user's Celery app, made taskcast-ready, for the tests of ``install``
(tests/test_install.py). Its worker runs with ``celery -A tests.installed_app worker``.

It shares the session's Redis, under a key prefix and a queue of its own, so that the
session's demo worker never sees its tasks.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task

import taskcast
from taskcast_celery import keys

PREFIX = os.environ["TASKCAST_KEY_PREFIX"] + "user:"

app = Celery(
    "installed",
    broker=os.environ["TASKCAST_REDIS_URL"],
    backend=os.environ["TASKCAST_REDIS_URL"],
)
app.conf.update(
    task_default_queue="installed",
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
)
taskcast.install(app)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task(bind=True)
def flaky(self: Task[Any, Any], failures: int) -> int:
    """Fail ``failures`` times, retrying each time, then succeed."""
    if self.request.retries < failures:
        raise self.retry(countdown=0.05, max_retries=failures)
    return int(self.request.retries)


@app.task(bind=True)
def beating(self: Task[Any, Any]) -> bool:
    """Whether this task's heartbeat key exists while it runs."""
    client = self.app.backend.client
    return bool(client.exists(keys.heartbeat_key(PREFIX, str(self.request.id))))


@app.task(bind=True)
def report(self: Task[Any, Any], steps: int, step_seconds: float = 0) -> str:
    """Report each step with plain update_state, as Celery's documentation shows."""
    for step in range(1, steps + 1):
        self.update_state(state="PROGRESS", meta={"current": step, "total": steps})
        time.sleep(step_seconds)
    return "reported"


@app.task(bind=True)
def upload(self: Task[Any, Any], parts: int) -> str:
    """Report progress under a state of its own naming."""
    for part in range(1, parts + 1):
        self.update_state(state="UPLOADING", meta={"current": part, "total": parts})
    return "uploaded"
