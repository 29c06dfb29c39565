"""Task states: the ones taskcast adds to Celery's, and the ones that end a task.

Plain strings, as Celery stores them, so that reading a record needs no Celery import.
"""

from __future__ import annotations

# Recorded by the producer before the message is published, so that an id with no
# record at all is unknown rather than PENDING.
SENT = "SENT"
# What ``self.update_state(state="PROGRESS", meta=...)`` stores, by convention.
PROGRESS = "PROGRESS"
# Celery's own, as they appear in records (``celery.states``).
PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
# Celery's, stored only by a task that sets it itself before raising ``Ignore``.
IGNORED = "IGNORED"
# Celery's READY_STATES: a task in one of these has ended, for good.
FINAL_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
# Not started: recorded, queued, or taken by a worker that has not begun it. A group of
# members only in these has not started either; celery-progress shows them as pending.
WAITING_STATES = frozenset({SENT, PENDING, RECEIVED})
