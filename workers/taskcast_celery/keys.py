"""Every Redis key name that taskcast reads or writes, in one place (the demo app's own
are in ``taskcast_celery.demo.keys``)."""

from __future__ import annotations

# Celery's Redis result backend stores a task's state under this prefix and PUBLISHes
# each write on a channel of the same name.
TASK_META = "celery-task-meta-"
# Set when a task is cancelled, so a worker that never heard the revoke broadcast
# (it started later) still refuses to run the task.
REVOKED = "taskcast-revoked-"
# A running task's liveness: Redis's clock (ms) at its last heartbeat (taskcast_celery.heartbeat).
HEARTBEAT = "taskcast-heartbeat-"
# Celery's own key for a group's member ids (GroupResult.save), which taskcast reads.
GROUP_META = "celery-taskset-meta-"


def task_meta_key(prefix: str, task_id: str) -> str:
    """The result-backend key (and pub/sub channel) of ``task_id``."""
    return f"{prefix}{TASK_META}{task_id}"


def revoked_key(prefix: str, task_id: str) -> str:
    """The key that marks ``task_id`` as cancelled."""
    return f"{prefix}{REVOKED}{task_id}"


def heartbeat_key(prefix: str, task_id: str) -> str:
    """The key a running task's worker keeps fresh while it runs."""
    return f"{prefix}{HEARTBEAT}{task_id}"


def group_meta_key(prefix: str, group_id: str) -> str:
    """The result-backend key of a group's member ids."""
    return f"{prefix}{GROUP_META}{group_id}"
