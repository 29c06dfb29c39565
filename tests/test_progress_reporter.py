"""The throttled progress helper, driven with a manual clock."""

from __future__ import annotations

from typing import Any

import pytest

from taskcast_celery.progress import ProgressReporter


class Recorder:
    """Stands in for a bound task: keeps what ``update_state`` was given."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []

    def update_state(self, task_id: str | None = None, state: str | None = None,
                     meta: Any = None) -> None:  # fmt: skip
        assert state == "PROGRESS"
        self.writes.append(meta)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_writes_at_most_once_per_interval_and_always_the_last_value() -> None:
    task, clock = Recorder(), Clock()
    with ProgressReporter(task, total=1000, min_interval=0.05, clock=clock) as reporter:
        for current in range(1, 1000):
            clock.now += 0.001  # a tight loop: one item per millisecond
            reporter.update(current)
    currents = [write["current"] for write in task.writes]
    # 999 items over ~1 s at 50 ms spacing: about 20 writes, not 999.
    assert 15 <= len(currents) <= 25
    assert currents == sorted(currents)
    assert currents[-1] == 999  # held back by the throttle, written on exit


def test_reaching_total_is_written_immediately() -> None:
    task, clock = Recorder(), Clock()
    reporter = ProgressReporter(task, total=3, min_interval=10, clock=clock)
    assert reporter.update(1) is True
    assert reporter.update(2) is False
    assert reporter.update(3, message="done") is True
    assert task.writes[-1] == {"current": 3, "total": 3, "message": "done"}
    reporter.flush()
    assert len(task.writes) == 2


def test_total_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ProgressReporter(Recorder(), total=0)
