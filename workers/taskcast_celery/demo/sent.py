"""The record of e-mails already sent, so that no task sends its e-mail twice.

A task's e-mail is sent at most once per task id: a retry, or a message redelivered
after its worker died, finds the record and returns the ids it holds instead of sending.
The record is written right after the API accepts the e-mail. What it cannot cover,
because the API offers no idempotency key: a worker that dies between the send and the
record, and an acceptance whose answer is lost on the way back (a read timeout), which
is retried like any other timeout.
"""

from __future__ import annotations

import json
from typing import cast

from redis import Redis

from taskcast_celery.demo import keys


class SentRecord:
    """Message ids of sent e-mails, by task id, kept as long as the task records."""

    def __init__(self, client: Redis, prefix: str, expires: int) -> None:
        self._client = client
        self._prefix = prefix
        self._expires = expires

    def get(self, task_id: str) -> list[str] | None:
        """The message ids ``task_id`` already sent, or None when it sent nothing."""
        raw = cast("bytes | None", self._client.get(keys.email_sent_key(self._prefix, task_id)))
        if raw is None:
            return None
        message_ids: list[str] = json.loads(raw)
        return message_ids

    def put(self, task_id: str, message_ids: list[str]) -> None:
        """Record that ``task_id`` sent its e-mail."""
        key = keys.email_sent_key(self._prefix, task_id)
        self._client.set(key, json.dumps(message_ids), ex=self._expires)
