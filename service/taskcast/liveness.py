"""Whether a running task has gone silent: its heartbeat, read against Redis's clock.

Workers keep a heartbeat key fresh while a task runs (``taskcast_celery.heartbeat``); here a
task is *stalled* when it is running (by its record) and its last beat is older than
``TASKCAST_STALL_AFTER``. Only running states can stall: a queued task (SENT, PENDING)
or one waiting for its retry (RETRY) has no process to beat for it, and a final one is
over. A running task with no heartbeat key at all was run by a worker that does not
beat: with no signal there is nothing to judge by, so it is not called stalled.
"""

from __future__ import annotations

from taskcast_celery import states
from taskcast_celery.states import FINAL_STATES, WAITING_STATES

# States in which no process is running the task, so no heartbeat is expected: not
# started, waiting for its retry, or a record that says nothing (UNREADABLE).
_NOT_RUNNING = WAITING_STATES | {states.RETRY, "UNREADABLE"}


def can_stall(state: str) -> bool:
    """Whether a task in ``state`` is being run, so that its heartbeat matters."""
    return state not in _NOT_RUNNING and state not in FINAL_STATES


def silent(beat: bytes | None, now_ms: int, stall_after: float) -> bool:
    """Whether the heartbeat ``beat`` (Redis's clock, ms) is older than ``stall_after``
    seconds at ``now_ms``; a missing or unreadable beat is no evidence either way."""
    if beat is None:
        return False
    try:
        return now_ms - int(beat) > stall_after * 1000
    except ValueError:
        return False


def is_stalled(state: str, beat: bytes | None, now_ms: int, stall_after: float) -> bool:
    """Whether a task in ``state`` whose last beat is ``beat`` counts as stalled now.

    ``stall_after`` 0 turns detection off.
    """
    return bool(stall_after) and can_stall(state) and silent(beat, now_ms, stall_after)
