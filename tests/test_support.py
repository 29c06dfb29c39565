"""The test helpers themselves (tests/support.py): what they wait for, and what they
refuse to pass."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import assert_progress_in_order, eventually


async def test_eventually_takes_a_plain_probe_and_lets_the_loop_run() -> None:
    seen: list[int] = []

    async def fill() -> None:
        for n in range(3):
            await asyncio.sleep(0.01)
            seen.append(n)

    filling = asyncio.create_task(fill())
    assert await eventually(lambda: len(seen), lambda count: count == 3, within=5) == 3
    await filling


async def test_eventually_awaits_a_probe_that_returns_an_awaitable() -> None:
    answers = iter(range(100))

    async def probe() -> int:
        await asyncio.sleep(0)
        return next(answers)

    assert await eventually(probe, lambda n: n >= 2, within=5) == 2
    assert await eventually(lambda: asyncio.to_thread(lambda: "done"), bool, within=5) == "done"


async def test_eventually_fails_with_the_last_answer() -> None:
    with pytest.raises(AssertionError, match="last answer: 'never'"):
        await eventually(lambda: "never", lambda answer: answer == "now", within=0.1)


def status(state: str, current: int | None = None, final: bool = False) -> dict[str, Any]:
    progress = None if current is None else {"current": current, "total": 5}
    return {"state": state, "final": final, "progress": progress}


def test_progress_in_order_passes_progress_then_one_final() -> None:
    statuses = [status("STARTED"), status("PROGRESS", 1), status("PROGRESS", 3)]
    assert_progress_in_order([*statuses, status("SUCCESS", 5, final=True)])
    # A success seen alone still carries its task's last progress.
    assert_progress_in_order([status("SUCCESS", 5, final=True)])


@pytest.mark.parametrize(
    "statuses",
    [
        [],
        [status("SENT"), status("STARTED"), status("FAILURE", final=True)],
        [status("PROGRESS", 3), status("PROGRESS", 2), status("SUCCESS", 5, final=True)],
        [status("PROGRESS", 1)],
        [status("SUCCESS", 5, final=True), status("SUCCESS", 5, final=True)],
    ],
    ids=["nothing", "no-progress", "backwards", "no-final", "two-finals"],
)
def test_progress_in_order_fails(statuses: list[dict[str, Any]]) -> None:
    with pytest.raises(AssertionError):
        assert_progress_in_order(statuses)
