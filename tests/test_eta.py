"""The rate and ETA estimator on synthetic progress: steady, bursty, stalled, restarted."""

from __future__ import annotations

import itertools

import pytest

from taskcast.live.eta import Countdown, Estimate, EtaEstimator


def steady(estimator: EtaEstimator, *, steps: int, every: float, total: int) -> float:
    """Advance one unit every ``every`` seconds from 0; return the time of the last step."""
    for step in range(steps + 1):
        estimator.observe(step * every, step, total)
    return steps * every


def test_nothing_is_known_from_one_sample_or_before_any_advance() -> None:
    estimator = EtaEstimator()
    assert estimator.estimate(0.0) == Estimate(None, None)
    estimator.observe(0.0, 3, 10)
    assert estimator.estimate(0.0) == Estimate(None, None)
    estimator.observe(1.0, 3, 10)  # same current: no advance
    assert estimator.estimate(2.0) == Estimate(None, None)


def test_an_advance_at_the_instant_of_the_first_sample_says_nothing_yet() -> None:
    estimator = EtaEstimator()
    estimator.observe(5.0, 1, 10)
    estimator.observe(5.0, 2, 10)
    assert estimator.estimate(5.0) == Estimate(None, None)
    estimator.observe(5.5, 3, 10)
    assert estimator.estimate(5.5).rate == pytest.approx(4.0, rel=0.01)


@pytest.mark.parametrize("every", [0.05, 0.2, 1.0, 5.0])
def test_a_steady_task_gets_its_true_rate_and_eta(every: float) -> None:
    estimator = EtaEstimator()
    now = steady(estimator, steps=30, every=every, total=100)
    rate, eta_s = estimator.estimate(now)
    assert rate == pytest.approx(1 / every, rel=1e-3)
    assert eta_s == pytest.approx(70 * every, rel=1e-3, abs=0.1)


def test_the_first_estimate_is_the_plain_average_since_the_first_sample() -> None:
    estimator = EtaEstimator(time_constant=30.0)
    estimator.observe(0.0, 0, 100)
    estimator.observe(0.1, 1, 100)  # 10/s for 0.1 s, then 1/s for 0.9 s
    estimator.observe(1.0, 2, 100)
    assert estimator.estimate(1.0).rate == pytest.approx(2.0, rel=0.02)


def test_bursts_count_for_the_time_they_took_not_for_their_number_of_updates() -> None:
    # Ten updates within 45 ms, every 2 s: a long-run pace of 5 units a second.
    estimator = EtaEstimator()
    current = 0
    for period in range(30):
        start = period * 2.0
        for k in range(10):
            current += 1
            estimator.observe(start + k * 0.005, current, 10_000)
        after_burst = estimator.estimate(start + 0.045)
        before_next = estimator.estimate(start + 1.99)
    # A per-sample average would sit near the burst's own pace, 200 a second.
    assert after_burst.rate == pytest.approx(5.0, rel=0.1)
    assert before_next.rate == pytest.approx(5.0, rel=0.1)
    assert after_burst.eta_s == pytest.approx((10_000 - current) / 5.0, rel=0.1)


def test_a_pace_change_shows_within_a_few_time_constants() -> None:
    estimator = EtaEstimator(time_constant=10.0)
    now = steady(estimator, steps=100, every=0.1, total=10_000)  # 10/s for 10 s
    for step in range(1, 401):  # then 2/s for 40 s
        estimator.observe(now + step * 0.1, 100 + step // 5, 10_000)
    assert estimator.estimate(now + 40.0).rate == pytest.approx(2.0, rel=0.1)


def test_a_stall_lowers_the_rate_and_raises_the_eta_as_time_passes() -> None:
    estimator = EtaEstimator(time_constant=10.0)
    now = steady(estimator, steps=100, every=0.1, total=200)
    estimates = [estimator.estimate(now + idle) for idle in (0, 1, 5, 10, 30)]
    rates = [estimate.rate for estimate in estimates]
    etas = [estimate.eta_s for estimate in estimates]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)
    assert etas == sorted(etas) and len(set(etas)) == len(etas)
    assert etas[0] == pytest.approx(10.0)
    # Reports that do not advance (a new message, the same count) change nothing of it.
    estimator.observe(now + 29.0, 100, 200)
    assert estimator.estimate(now + 30.0) == estimates[-1]


def test_moving_again_after_a_stall_does_not_make_the_eta_jump_up() -> None:
    estimator = EtaEstimator(time_constant=10.0)
    now = steady(estimator, steps=100, every=0.1, total=200)
    stalled = estimator.estimate(now + 20.0)
    estimator.observe(now + 20.0, 101, 200)
    resumed = estimator.estimate(now + 20.0)
    assert resumed.rate is not None and stalled.rate is not None
    assert resumed.eta_s is not None and stalled.eta_s is not None
    assert resumed.rate >= stalled.rate and resumed.eta_s <= stalled.eta_s


def test_progress_going_backwards_is_a_restart() -> None:
    estimator = EtaEstimator()
    now = steady(estimator, steps=50, every=0.1, total=100)  # 10/s
    estimator.observe(now + 1.0, 1, 100)
    assert estimator.estimate(now + 1.0) == Estimate(None, None)
    estimator.observe(now + 2.0, 3, 100)  # the retry runs at 2/s: the old pace is gone
    assert estimator.estimate(now + 2.0) == Estimate(2.0, 48.5)


@pytest.mark.parametrize("total", [None, 0])
def test_without_a_total_there_is_a_rate_but_no_eta(total: int | None) -> None:
    estimator = EtaEstimator()
    estimator.observe(0.0, 0, total)
    estimator.observe(2.0, 10, total)
    assert estimator.estimate(2.0) == Estimate(5.0, None)


def test_a_changed_total_changes_the_eta_not_the_rate() -> None:
    estimator = EtaEstimator()
    now = steady(estimator, steps=10, every=0.5, total=20)
    assert estimator.estimate(now) == Estimate(2.0, 5.0)
    estimator.observe(now, 10, 30)
    assert estimator.estimate(now) == Estimate(2.0, 10.0)


def test_past_the_total_the_eta_is_zero() -> None:
    estimator = EtaEstimator()
    estimator.observe(0.0, 0, 5)
    estimator.observe(1.0, 7, 5)
    assert estimator.estimate(1.0) == Estimate(7.0, 0.0)


def test_annotate_fills_in_a_status_objects_progress() -> None:
    estimator = EtaEstimator()
    first = {"current": 0, "total": 8, "rate": None, "eta_s": None}
    estimator.annotate(first, 10.0)
    assert (first["rate"], first["eta_s"]) == (None, None)
    second = {"current": 2, "total": 8, "rate": None, "eta_s": None}
    estimator.annotate(second, 11.0)
    assert (second["rate"], second["eta_s"]) == (2.0, 3.0)


def test_the_time_constant_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        EtaEstimator(time_constant=0)


def bursty_group() -> tuple[list[tuple[float, float]], float]:
    """20 members on 2 workers, taking 1 s and 7 s in turn, reporting no progress of their
    own: the group advances in bursts. Each member's (start, end), and the group's end."""
    free = [0.0, 0.0]
    spans = []
    for member in range(20):
        worker = free.index(min(free))
        start = free[worker]
        free[worker] = start + (1.0 if member % 2 == 0 else 7.0)
        spans.append((start, free[worker]))
    return spans, max(free)


def test_a_group_s_eta_counts_down_instead_of_swinging_between_bursts() -> None:
    spans, end = bursty_group()
    estimator, countdown = EtaEstimator(), Countdown()
    raw: list[float] = []
    shown: list[float] = []
    for second in range(int(end)):
        done = sum(1.0 for _, ended in spans if second >= ended)
        estimator.observe(second, done, 20)
        estimate = estimator.estimate(second).eta_s
        if estimate is None:
            continue  # nothing ended yet: no pace to tell
        raw.append(estimate)
        shown_now = countdown.show(second, estimate)
        assert shown_now is not None
        shown.append(shown_now)
    # The raw estimate swings by many seconds from one second to the next...
    assert max(later - earlier for earlier, later in itertools.pairwise(raw)) > 9
    # ...what is shown rises by less than 3 s in a second, at worst, and then counts down.
    assert max(later - earlier for earlier, later in itertools.pairwise(shown)) < 3
    assert shown[-1] < shown[len(shown) // 2] < max(shown)
    # A task that ends, or cannot be timed, has nothing to count down.
    assert countdown.show(end, None) is None
    assert countdown.show(end + 1, 5.0) == 5.0
