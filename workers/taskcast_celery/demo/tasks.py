"""The jobs taskcast ships with."""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from taskcast_celery import keys
from taskcast_celery.demo.app import backend_client, celery_app, settings
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
from taskcast_celery.demo.sent import SentRecord
from taskcast_celery.progress import ProgressReporter

mail_settings = MailSettings.from_env()


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
def progress(
    self: TaskcastTask, total: int = 100, step_seconds: float = 1.0, fail_at: int | None = None
) -> dict[str, str]:
    """Count from 1 to ``total``, one step every ``step_seconds``, reporting each step;
    raise on reaching step ``fail_at``, if given (to show what a failure looks like)."""
    with ProgressReporter(self, total) as reporter:
        for current in range(1, total + 1):
            time.sleep(step_seconds)
            if current == fail_at:
                raise RuntimeError(f"failed at step {current} of {total}")
            reporter.update(current)
    return {"status": "completed"}


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


def mail_sender() -> Sender:
    """Mailtrap when a token is set; else the dev outbox in dev mode; else nowhere."""
    if mail_settings.token:
        return MailtrapSender(mail_settings)
    if mail_settings.dev:
        return DevOutbox(
            backend_client(), settings.key_prefix, mail_settings, settings.result_expires
        )
    raise MailNotConfigured(
        "MAILTRAP_API_TOKEN is not set: set it to send e-mail, "
        "or TASKCAST_DEV=1 to keep e-mail in the dev outbox"
    )


@celery_app.task(base=TaskcastTask, bind=True, name="taskcast.email")
def email(self: TaskcastTask, to: str, data: dict[str, Any]) -> dict[str, Any]:
    """Process ``data`` and e-mail the result to ``to``: the tutorial's third job.

    Transient failures are retried with backoff, permanent ones fail at once, and the
    e-mail is sent at most once per task id however often the task runs.
    """
    task_id = str(self.request.id)
    progress = ProgressReporter(self, total=2, min_interval=0)
    progress.update(0, "processing")
    mail = compose(to, data, task_id)
    progress.update(1, "sending")
    sent = SentRecord(backend_client(), settings.key_prefix, settings.result_expires)
    message_ids = sent.get(task_id)
    if message_ids is None:
        message_ids = _send(self, mail)
        sent.put(task_id, message_ids)
    return {"status": "sent", "message_ids": message_ids}


def _send(task: TaskcastTask, mail: OutgoingMail) -> list[str]:
    try:
        return mail_sender().send(mail)
    except MailUnavailable as exc:
        retries = task.request.retries
        if retries >= mail_settings.max_retries:
            raise MailUnavailable(f"{exc}; gave up after {retries + 1} attempts") from None
        delay = backoff_delay(retries, mail_settings.retry_backoff, mail_settings.retry_backoff_max)
        # The retry keeps the task id, so it finds the sent record of this task.
        raise task.retry(exc=exc, countdown=delay, max_retries=mail_settings.max_retries) from None
