"""Every Redis key name that taskcast reads or writes, in one place."""

from __future__ import annotations

# Celery's Redis result backend stores a task's state under this prefix and PUBLISHes
# each write on a channel of the same name.
TASK_META = "celery-task-meta-"
# Set when a task is cancelled, so a worker that never heard the revoke broadcast
# (it started later) still refuses to run the task.
REVOKED = "taskcast-revoked-"
# The message ids of an e-mail task's send, written as soon as the send succeeds, so a
# retry or a redelivered message of that task does not send the e-mail again.
EMAIL_SENT = "taskcast-email-sent-"
# A running task's liveness: Redis's clock (ms) at its last heartbeat (taskcast_celery.heartbeat).
HEARTBEAT = "taskcast-heartbeat-"
# Celery's own key for a group's member ids (GroupResult.save), which taskcast reads.
GROUP_META = "celery-taskset-meta-"
# The e-mails "sent" without a Mailtrap token in dev mode, newest first.
DEV_OUTBOX = "taskcast-dev-outbox"


def task_meta_key(prefix: str, task_id: str) -> str:
    """The result-backend key (and pub/sub channel) of ``task_id``."""
    return f"{prefix}{TASK_META}{task_id}"


def revoked_key(prefix: str, task_id: str) -> str:
    """The key that marks ``task_id`` as cancelled."""
    return f"{prefix}{REVOKED}{task_id}"


def email_sent_key(prefix: str, task_id: str) -> str:
    """The key that records the message ids ``task_id`` has sent."""
    return f"{prefix}{EMAIL_SENT}{task_id}"


def heartbeat_key(prefix: str, task_id: str) -> str:
    """The key a running task's worker keeps fresh while it runs."""
    return f"{prefix}{HEARTBEAT}{task_id}"


def group_meta_key(prefix: str, group_id: str) -> str:
    """The result-backend key of a group's member ids."""
    return f"{prefix}{GROUP_META}{group_id}"


def dev_outbox_key(prefix: str) -> str:
    """The list of e-mails kept in the dev outbox."""
    return f"{prefix}{DEV_OUTBOX}"
