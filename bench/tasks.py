"""A benchmark task, loaded by the benchmark's worker with ``--include bench.tasks``."""

from __future__ import annotations

import random
import time
from typing import Any

from taskcast_celery.demo.celery import app as celery_app


@celery_app.task(bind=True, name="bench.stamp")
def stamp(self: Any, count: int, gap_min: float, gap_max: float, lead: float) -> int:
    """Report ``count`` progress states, each stamped with the wall-clock time of its write.

    It waits ``lead`` seconds first, so its subscriber is in place before the first
    stamp, and a random gap between stamps, so stamps do not fall in step with a poll.
    """
    time.sleep(lead)
    for i in range(1, count + 1):
        meta = {"current": i, "total": count, "message": repr(time.time())}
        self.update_state(state="PROGRESS", meta=meta)
        time.sleep(random.uniform(gap_min, gap_max))
    return count
