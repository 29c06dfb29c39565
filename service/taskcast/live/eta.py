"""How fast a task advances and how long it has left, from the progress the hub sees.

The rate is an exponentially weighted average over *time*, not over samples: progress
between two observations is taken to have happened evenly across that interval, and
each interval weighs by how long it lasted and how recently it ended (weight
``exp(-age / time_constant)`` per second). So a burst of fifty quick updates counts for
the fraction of a second it took, not for fifty samples, and the pause after it counts
for its full length once the next advance shows how long it was.

A stall is seen without new samples: an estimate asked for at time ``now`` counts the
time since the last advance as time without progress, so the rate falls and the ETA
grows for as long as nothing moves. Progress that goes backwards is a restart (a retried
task counting again from 1): the history is dropped.

Pure and synchronous: the hub feeds it the time at which it read each change.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

# Seconds: pace changes show within about this long; bursts and pauses shorter than it
# are averaged out.
DEFAULT_TIME_CONSTANT = 30.0


class Estimate(NamedTuple):
    """Units of ``current`` per second, and seconds left; None while unknown."""

    rate: float | None
    eta_s: float | None


class EtaEstimator:
    """The rate and time left of one task, fed ``(time, current, total)`` observations."""

    __slots__ = ("_current", "_since", "_tau", "_total", "_weighted_progress", "_weighted_time")

    def __init__(self, time_constant: float = DEFAULT_TIME_CONSTANT) -> None:
        if time_constant <= 0:
            raise ValueError("time_constant must be positive")
        self._tau = time_constant
        self._reset(None, 0.0)
        self._total: float | None = None

    def _reset(self, current: float | None, now: float) -> None:
        self._current = current
        self._since = now  # when ``current`` was first seen: the last advance
        # Decayed sums of progress and of elapsed time; their ratio is the rate. Both
        # start at zero, so early estimates are the plain average since the first sample.
        self._weighted_progress = 0.0
        self._weighted_time = 0.0

    def observe(self, now: float, current: float | None, total: float | None) -> None:
        """Take in the progress read at ``now`` (seconds, from a monotonic clock)."""
        self._total = total
        if current is None:
            return
        if self._current is None or current < self._current:
            self._reset(current, now)
            return
        if current == self._current:
            return  # no advance: the time since the last one counts when estimating
        elapsed = max(now - self._since, 0.0)
        decay, weight = self._decay(elapsed)
        self._weighted_progress = self._weighted_progress * decay + (current - self._current) * (
            weight / elapsed if elapsed else 1.0
        )
        self._weighted_time = self._weighted_time * decay + weight
        self._current, self._since = current, now

    def estimate(self, now: float) -> Estimate:
        """The rate and time left as of ``now``, counting any time since the last advance."""
        # The stall since the last advance is an interval without progress, weighed like
        # any other: exactly what the next advance, if tiny, would make of it. So the
        # estimate does not jump when the task moves again, and a stall longer than the
        # time constant drives the rate towards zero: past that, the old pace says little.
        decay, weight = self._decay(max(now - self._since, 0.0))
        progress = self._weighted_progress * decay
        elapsed = self._weighted_time * decay + weight
        # No advance seen yet, or only one at the very instant of the first sample.
        if progress <= 0.0 or elapsed <= 0.0:
            return Estimate(None, None)
        rate = progress / elapsed
        eta_s = None
        if self._total and self._current is not None:
            eta_s = round(max(self._total - self._current, 0.0) / rate, 1)
        return Estimate(float(f"{rate:.4g}"), eta_s)

    def annotate(self, progress: dict[str, Any], now: float) -> None:
        """Observe a status object's ``progress`` and fill in its ``rate`` and ``eta_s``."""
        self.observe(now, progress["current"], progress["total"])
        progress["rate"], progress["eta_s"] = self.estimate(now)

    def _decay(self, elapsed: float) -> tuple[float, float]:
        """How much older weights shrink over ``elapsed``, and the weight of that interval."""
        # The interval's weight is the integral of exp(-age / tau) over it: tau * (1 - decay),
        # taken through expm1 so that a millisecond's weight is not lost to rounding.
        x = elapsed / self._tau
        return math.exp(-x), -math.expm1(-x) * self._tau


class Countdown:
    """An ETA as a person reads it: it counts down with the clock, and moves towards each
    fresh estimate over ``settle`` seconds rather than jumping to it.

    A group's members end in bursts (one worker finishes a short member, another is deep
    in a long one), so its raw estimate swings between bursts: 1:33, 0:51, 1:03, 0:49. The
    countdown keeps what was said true as time passes and lets new evidence in gradually.
    """

    __slots__ = ("_at", "_settle", "_shown")

    def __init__(self, settle: float = 10.0) -> None:
        self._settle = settle
        self._shown: float | None = None
        self._at = 0.0

    def show(self, now: float, estimate: float | None) -> float | None:
        """The ETA to show at ``now``, given the estimator's ``estimate`` (None: unknown)."""
        if estimate is None:
            self._shown = None
            return None
        if self._shown is None:
            shown = estimate
        else:
            elapsed = max(now - self._at, 0.0)
            counted = max(self._shown - elapsed, 0.0)
            shown = counted + min(elapsed / self._settle, 1.0) * (estimate - counted)
        self._shown, self._at = shown, now
        return round(shown, 1)
