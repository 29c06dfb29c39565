"""Task states taskcast adds to Celery's own."""

from __future__ import annotations

from celery import states

# Recorded by the producer before the message is published, so that an id with no
# record at all is unknown rather than PENDING.
SENT = "SENT"
PROGRESS = "PROGRESS"
FINAL_STATES = frozenset(states.READY_STATES)
