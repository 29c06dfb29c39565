"""The demo app's jobs: the tutorial's three (a wait, a counter that reports progress,
data processed and e-mailed through Mailtrap), exposed to clients like any others."""

from __future__ import annotations

import json
import time
from typing import Any, cast

from celery import Celery, Task

from taskcast_celery.backend import TaskcastRedisBackend
from taskcast_celery.demo.mail import (
    MailNotConfigured,
    MailSettings,
    MailtrapSender,
    MailUnavailable,
    OutgoingMail,
    Sender,
    backoff_delay,
)
from taskcast_celery.demo.outbox import DevOutbox
from taskcast_celery.demo.params import EmailParams, ProgressParams, SleepParams
from taskcast_celery.demo.sent import SentRecord
from taskcast_celery.expose import expose
from taskcast_celery.progress import ProgressReporter


def add_tasks(app: Celery, mail: MailSettings) -> None:
    """Define the demo's tasks on ``app`` (and on no other: ``shared=False``), sending
    e-mail as ``mail`` says."""

    def backend() -> TaskcastRedisBackend:
        return cast("TaskcastRedisBackend", app.backend)

    @expose(name="progress", params=ProgressParams)
    @app.task(bind=True, name="taskcast.progress", shared=False)
    def progress(
        self: Task,  # type: ignore[type-arg]
        total: int = 100,
        step_seconds: float = 1.0,
        fail_at: int | None = None,
    ) -> dict[str, str]:
        """Count to a total, reporting progress.

        One step every ``step_seconds``; raise on reaching step ``fail_at``, if given
        (to show what a failure looks like).
        """
        with ProgressReporter(self, total) as reporter:
            for current in range(1, total + 1):
                time.sleep(step_seconds)
                if current == fail_at:
                    raise RuntimeError(f"failed at step {current} of {total}")
                reporter.update(current)
        return {"status": "completed"}

    @expose(name="sleep", params=SleepParams)
    @app.task(bind=True, name="taskcast.sleep", shared=False)
    def sleep(self: Task, seconds: float = 10) -> str:  # type: ignore[type-arg]
        """Wait a number of seconds: the tutorial's long task."""
        time.sleep(seconds)
        return f"Task completed after {seconds:g} seconds"

    def sender() -> Sender:
        """Mailtrap when a token is set; else the dev outbox in dev mode; else nowhere."""
        if mail.token:
            return MailtrapSender(mail)
        if mail.dev:
            store = backend()
            return DevOutbox(store.client, store.key_prefix, mail, int(store.expires or 0))
        raise MailNotConfigured(
            "MAILTRAP_API_TOKEN is not set: set it to send e-mail, "
            "or TASKCAST_DEV=1 to keep e-mail in the dev outbox"
        )

    def send(task: Task, outgoing: OutgoingMail) -> list[str]:  # type: ignore[type-arg]
        try:
            return sender().send(outgoing)
        except MailUnavailable as exc:
            retries = task.request.retries
            if retries >= mail.max_retries:
                raise MailUnavailable(f"{exc}; gave up after {retries + 1} attempts") from None
            delay = backoff_delay(retries, mail.retry_backoff, mail.retry_backoff_max)
            # The retry keeps the task id, so it finds the sent record of this task.
            raise task.retry(exc=exc, countdown=delay, max_retries=mail.max_retries) from None

    @expose(name="email", params=EmailParams)
    @app.task(bind=True, name="taskcast.email", shared=False)
    def email(self: Task, to: str, data: dict[str, Any]) -> dict[str, Any]:  # type: ignore[type-arg]
        """Process data, then e-mail the result through Mailtrap.

        Transient failures are retried with backoff, permanent ones fail at once, and
        the e-mail is sent at most once per task id however often the task runs.
        """
        task_id = str(self.request.id)
        reporter = ProgressReporter(self, total=2, min_interval=0)
        reporter.update(0, "processing")
        outgoing = compose(to, data, task_id)
        reporter.update(1, "sending")
        store = backend()
        sent = SentRecord(store.client, store.key_prefix, int(store.expires or 0))
        message_ids = sent.get(task_id)
        if message_ids is None:
            message_ids = send(self, outgoing)
            sent.put(task_id, message_ids)
        return {"status": "sent", "message_ids": message_ids}


def compose(to: str, data: dict[str, Any], task_id: str) -> OutgoingMail:
    """Process ``data`` into the e-mail that reports it."""
    rendered = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    fields = "1 field" if len(data) == 1 else f"{len(data)} fields"
    return OutgoingMail(
        to=to,
        subject="Your data has been processed",
        text=f"Your data has been processed ({fields}):\n\n{rendered}\n",
        task_id=task_id,
    )
