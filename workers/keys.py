"""Every Redis key name that taskcast reads or writes, in one place."""

from __future__ import annotations

# Celery's Redis result backend stores a task's state under this prefix and PUBLISHes
# each write on a channel of the same name.
TASK_META = "celery-task-meta-"
# Set when a task is cancelled, so a worker that never heard the revoke broadcast
# (it started later) still refuses to run the task.
REVOKED = "taskcast-revoked-"


def task_meta_key(prefix: str, task_id: str) -> str:
    """The result-backend key (and pub/sub channel) of ``task_id``."""
    return f"{prefix}{TASK_META}{task_id}"


def revoked_key(prefix: str, task_id: str) -> str:
    """The key that marks ``task_id`` as cancelled."""
    return f"{prefix}{REVOKED}{task_id}"
