"""A progress reporter for task authors that cannot flood Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from taskcast_celery.states import PROGRESS

# At most one write per this many seconds: a tight loop reporting every item would
# otherwise turn into a Redis write (and a PUBLISH to every watcher) per item.
DEFAULT_MIN_INTERVAL = 0.05


class _StateUpdater(Protocol):
    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None
    ) -> None: ...


class ProgressReporter:
    """Report ``current`` of ``total`` (and an optional message) from a bound task.

    Writes are throttled to one per ``min_interval``; the newest value always lands:
    reaching ``total`` writes at once, and leaving the ``with`` block writes whatever
    was held back::

        with ProgressReporter(self, total=len(rows)) as progress:
            for i, row in enumerate(rows, 1):
                handle(row)
                progress.update(i)
    """

    def __init__(
        self,
        task: _StateUpdater,
        total: int,
        *,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 1:
            raise ValueError("total must be at least 1")
        self._task = task
        self.total = total
        self._min_interval = min_interval
        self._clock = clock
        self._last_write = float("-inf")
        self._pending: dict[str, Any] | None = None
        self.writes = 0

    def update(self, current: int, message: str | None = None) -> bool:
        """Record progress; return whether it was written to the backend now."""
        meta: dict[str, Any] = {"current": current, "total": self.total, "message": message}
        now = self._clock()
        if current >= self.total or now - self._last_write >= self._min_interval:
            self._write(meta, now)
            return True
        self._pending = meta
        return False

    def flush(self) -> None:
        """Write the held-back value, if any."""
        if self._pending is not None:
            self._write(self._pending, self._clock())

    def _write(self, meta: dict[str, Any], now: float) -> None:
        self._task.update_state(state=PROGRESS, meta=meta)
        self._last_write = now
        self._pending = None
        self.writes += 1

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush()
