"""A task that reports every step of a tight loop does not flood Redis."""

from __future__ import annotations

import json
import uuid

import redis

from tests import env
from tests.support import eventually
from workers import keys
from workers.app import celery_app


async def test_tight_loop_progress_is_throttled_and_ends_at_total(worker: object) -> None:
    task_id = str(uuid.uuid4())
    listener = redis.asyncio.Redis.from_url(env.REDIS_URL).pubsub()
    await listener.subscribe(keys.task_meta_key(env.KEY_PREFIX, task_id))
    published: list[dict[str, object]] = []
    try:
        celery_app.send_task(
            "taskcast.progress", kwargs={"total": 20_000, "step_seconds": 0}, task_id=task_id
        )

        async def collect() -> bool:
            while (message := await listener.get_message(timeout=0.05)) is not None:
                if message["type"] == "message":
                    published.append(json.loads(message["data"]))
            return bool(published) and published[-1]["status"] == "SUCCESS"

        await eventually(collect, bool, within=30)
    finally:
        await listener.aclose()
    progress = [record["result"] for record in published if record["status"] == "PROGRESS"]
    # 20,000 steps, yet only a handful of writes (one per 50 ms at most).
    assert 1 <= len(progress) < 200
    currents = [item["current"] for item in progress]  # type: ignore[index]
    assert currents == sorted(currents)
    assert currents[-1] == 20_000
    assert published[-1]["progress"] == {"current": 20_000, "total": 20_000, "message": None}
