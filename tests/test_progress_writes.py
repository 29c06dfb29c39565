"""A task that reports every step of a tight loop does not flood Redis."""

from __future__ import annotations

import uuid

from tests import env
from tests.support import Published, session_app


async def test_tight_loop_progress_is_throttled_and_ends_at_total(worker: object) -> None:
    task_id = str(uuid.uuid4())
    async with Published(env.REDIS_URL, env.KEY_PREFIX, task_id) as published:
        session_app().send_task(
            "taskcast.progress", kwargs={"total": 20_000, "step_seconds": 0}, task_id=task_id
        )
        records = await published.until_final(within=30)
    assert records[-1]["status"] == "SUCCESS"
    progress = [record["result"] for record in records if record["status"] == "PROGRESS"]
    # 20,000 steps, yet only a handful of writes (one per 50 ms at most).
    assert 1 <= len(progress) < 200
    currents = [item["current"] for item in progress]
    assert currents == sorted(currents)
    assert currents[-1] == 20_000
    assert records[-1]["progress"] == {"current": 20_000, "total": 20_000, "message": None}
