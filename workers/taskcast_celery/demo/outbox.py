"""The dev outbox: where e-mail goes in dev mode when no Mailtrap token is set.

A capped, expiring Redis list that the service shows at ``GET /dev/outbox``: the worker
and the service already share Redis, so nothing else has to run, nothing is left on
disk, and the e-mails survive a worker restart for as long as the task records do.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from email.utils import formataddr

from redis import Redis

from taskcast_celery.demo import keys
from taskcast_celery.demo.mail import MailSettings, OutgoingMail

logger = logging.getLogger(__name__)

# The outbox keeps only the newest e-mails: it is for a person to look at, not a store.
OUTBOX_SIZE = 100


class DevOutbox:
    """Keeps each e-mail in the dev outbox instead of sending it."""

    def __init__(self, client: Redis, prefix: str, settings: MailSettings, expires: int) -> None:
        self._client = client
        self._key = keys.dev_outbox_key(prefix)
        self._sender = formataddr((settings.sender_name, settings.sender))
        self._expires = expires

    def send(self, mail: OutgoingMail) -> list[str]:
        message_id = f"dev-{uuid.uuid4()}"
        entry = {
            "message_id": message_id,
            "task_id": mail.task_id,
            "from": self._sender,
            "to": mail.to,
            "subject": mail.subject,
            "text": mail.text,
            "sent_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # One MULTI: the entry, the cap and the expiry land together.
        with self._client.pipeline() as pipe:
            pipe.lpush(self._key, json.dumps(entry))
            pipe.ltrim(self._key, 0, OUTBOX_SIZE - 1)
            pipe.expire(self._key, self._expires)
            pipe.execute()
        logger.info(
            "dev outbox: e-mail %s to %s, subject %r (no MAILTRAP_API_TOKEN: kept in Redis, "
            "shown at GET /dev/outbox)",
            message_id,
            mail.to,
            mail.subject,
        )
        return [message_id]
