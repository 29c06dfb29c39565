"""Reads of task records from the Redis result backend, without blocking the loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from redis.asyncio import Redis

from workers import keys

# MGET batches stay at or under this many keys, so one slow reply never holds Redis.
MGET_CHUNK = 1000


class ResultStore:
    """Async access to the records Celery's Redis result backend keeps."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def key(self, task_id: str) -> str:
        return keys.task_meta_key(self.prefix, task_id)

    async def read(self, task_id: str) -> bytes | None:
        """The raw record of one task, or None when there is none."""
        # decode_responses is off, so Redis answers bytes.
        return cast("bytes | None", await self.redis.get(self.key(task_id)))

    async def read_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """Raw records of many tasks: one MGET round trip per chunk of keys."""
        found: list[bytes | None] = []
        for start in range(0, len(task_ids), MGET_CHUNK):
            chunk = task_ids[start : start + MGET_CHUNK]
            values = await self.redis.mget([self.key(task_id) for task_id in chunk])
            found.extend(cast("list[bytes | None]", values))
        return found
