"""The Redis keys of the demo app's own, beside those of the library (``taskcast_celery.keys``)."""

from __future__ import annotations

# The message ids of an e-mail task's send, written as soon as the send succeeds, so a
# retry or a redelivered message of that task does not send the e-mail again.
EMAIL_SENT = "taskcast-email-sent-"
# The e-mails "sent" without a Mailtrap token in dev mode, newest first.
DEV_OUTBOX = "taskcast-dev-outbox"


def email_sent_key(prefix: str, task_id: str) -> str:
    """The key that records the message ids ``task_id`` has sent."""
    return f"{prefix}{EMAIL_SENT}{task_id}"


def dev_outbox_key(prefix: str) -> str:
    """The list of e-mails kept in the dev outbox."""
    return f"{prefix}{DEV_OUTBOX}"
