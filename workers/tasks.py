"""The jobs taskcast ships with."""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from workers import keys
from workers.app import backend_client, celery_app, settings
from workers.progress import ProgressReporter


class TaskcastTask(Task):  # type: ignore[type-arg]
    """Base class that refuses to run a task cancelled while it waited in the queue.

    Celery's revoke broadcast only reaches workers alive at the time; the marker key
    covers a worker that started later.
    """

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        if backend_client().exists(keys.revoked_key(settings.key_prefix, task_id)):
            self.backend.mark_as_revoked(task_id, "revoked", request=self.request)
            raise Ignore()


@celery_app.task(base=TaskcastTask, bind=True, name="taskcast.sleep")
def sleep(self: TaskcastTask, seconds: float = 10) -> str:
    """Wait ``seconds``: the tutorial's ``long_task``."""
    time.sleep(seconds)
    return f"Task completed after {seconds:g} seconds"


@celery_app.task(base=TaskcastTask, bind=True, name="taskcast.progress")
def progress(self: TaskcastTask, total: int = 100, step_seconds: float = 1.0) -> dict[str, str]:
    """Count from 1 to ``total``, one step every ``step_seconds``, reporting each step."""
    with ProgressReporter(self, total) as reporter:
        for current in range(1, total + 1):
            time.sleep(step_seconds)
            reporter.update(current)
    return {"status": "completed"}
