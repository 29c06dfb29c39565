"""Reads of task records from the Redis result backend, without blocking the loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from taskcast_celery import keys

# MGET batches stay at or under this many keys, so that no single reply grows unbounded.
MGET_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Reading:
    """What one round trip read: task records, heartbeats, and maybe Redis's clock."""

    # The records of the task ids asked for, in their order (None: no record).
    records: list[bytes | None]
    # The heartbeats of the ids asked for them, in their order (None: no heartbeat).
    beats: list[bytes | None]
    # Redis's clock in milliseconds, when it was asked for.
    now_ms: int | None


class ResultStore:
    """Async access to the records Celery's Redis result backend keeps."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def key(self, task_id: str) -> str:
        return keys.task_meta_key(self.prefix, task_id)

    async def read_group(self, group_id: str) -> bytes | None:
        """A group's record of its members (Celery's ``GroupResult.save``), or None."""
        return cast(
            "bytes | None", await self.redis.get(keys.group_meta_key(self.prefix, group_id))
        )

    def heartbeat_key(self, task_id: str) -> str:
        return keys.heartbeat_key(self.prefix, task_id)

    async def read_many(
        self, task_ids: Sequence[str], beat_ids: Sequence[str] = (), clock: bool = False
    ) -> Reading:
        """Records of ``task_ids`` and heartbeats of ``beat_ids`` in one round trip: one
        MGET per chunk of keys (records and heartbeats together) and, with ``clock``,
        Redis's TIME, the clock the heartbeats were written by."""
        wanted = [self.key(task_id) for task_id in task_ids]
        wanted += [self.heartbeat_key(task_id) for task_id in beat_ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(wanted), MGET_CHUNK):
                pipe.mget(wanted[start : start + MGET_CHUNK])
            if clock:
                pipe.time()
            replies = await pipe.execute()
        now_ms = None
        if clock:
            seconds, micros = replies.pop()
            now_ms = seconds * 1000 + micros // 1000
        values = [value for reply in replies for value in cast("list[bytes | None]", reply)]
        return Reading(values[: len(task_ids)], values[len(task_ids) :], now_ms)

    async def read_one(self, task_id: str) -> tuple[bytes | None, bytes | None, int]:
        """One task's record, its heartbeat and Redis's clock, in one round trip."""
        reading = await self.read_many([task_id], [task_id], clock=True)
        assert reading.now_ms is not None
        return reading.records[0], reading.beats[0], reading.now_ms
