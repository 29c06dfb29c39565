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
# Owned tasks (taskcast_celery.owners): a task's history entry (a hash, kept after its
# record expires), and per owner: every task newest first (a sorted set ordered by its
# members' text), the unfinished ones and the finished ones (scored by Redis's clock, ms),
# and the channel a new task is announced on.
HISTORY = "taskcast-history-"
OWNER_TASKS = "taskcast-owner-tasks-"
OWNER_ACTIVE = "taskcast-owner-active-"
OWNER_DONE = "taskcast-owner-done-"
OWNER_FEED = "taskcast-owner-feed-"
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


def history_key(prefix: str, task_id: str) -> str:
    """The history entry of an owned task."""
    return f"{prefix}{HISTORY}{task_id}"


def owner_tasks_key(prefix: str, owner: str) -> str:
    """Every listed task of ``owner``, newest first (``history_member`` orders them)."""
    return f"{prefix}{OWNER_TASKS}{owner}"


def owner_active_key(prefix: str, owner: str) -> str:
    """The unfinished tasks of ``owner``, scored by when they were sent."""
    return f"{prefix}{OWNER_ACTIVE}{owner}"


def owner_done_key(prefix: str, owner: str) -> str:
    """The finished tasks of ``owner``, scored by when they ended."""
    return f"{prefix}{OWNER_DONE}{owner}"


def owner_feed_channel(prefix: str, owner: str) -> str:
    """Where a new task of ``owner`` is announced (its id), as its SENT record is written."""
    return f"{prefix}{OWNER_FEED}{owner}"


# Milliseconds are counted down from this in ``history_member``, so that the text order
# of the members is newest first (good until the year 2286).
_NEWEST_FIRST = 10**13


def history_member(sent_ms: int, task_id: str) -> str:
    """A task's member in its owner's list: newer tasks sort first, ties by id."""
    return f"{_NEWEST_FIRST - sent_ms:013d}:{task_id}"


def member_sent_ms(member: str) -> int:
    """When the task of a list member was sent (Redis's clock, ms)."""
    return _NEWEST_FIRST - int(member[:13])
