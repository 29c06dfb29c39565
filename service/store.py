"""Reads of task records from the Redis result backend, without blocking the loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from workers import keys

# MGET batches stay at or under this many keys, so that no single reply grows unbounded.
MGET_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Reading:
    """What one round trip read: task records, heartbeats, and Redis's clock."""

    # The records of the task ids asked for, in their order (None: no record).
    records: list[bytes | None]
    # The heartbeats of the ids asked for them, in their order (None: no heartbeat).
    beats: list[bytes | None]
    # Redis's clock in milliseconds, read in the same round trip (0 if no beat was asked).
    now_ms: int


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

    async def read_many(self, task_ids: Sequence[str], beat_ids: Sequence[str] = ()) -> Reading:
        """Records of ``task_ids`` and heartbeats of ``beat_ids``, in one round trip:
        one pipeline of MGETs (a chunk of keys each) and, with heartbeats, Redis's TIME,
        so that their age is measured on the clock that wrote them."""
        async with self.redis.pipeline(transaction=False) as pipe:
            record_keys = [self.key(task_id) for task_id in task_ids]
            beat_keys = [self.heartbeat_key(task_id) for task_id in beat_ids]
            for group in (record_keys, beat_keys):
                for start in range(0, len(group), MGET_CHUNK):
                    pipe.mget(group[start : start + MGET_CHUNK])
            if beat_keys:
                pipe.time()
            replies = await pipe.execute()
        values: list[bytes | None] = []
        for reply in replies[: _chunks(len(record_keys))]:
            values.extend(cast("list[bytes | None]", reply))
        beats: list[bytes | None] = []
        now_ms = 0
        if beat_keys:
            for reply in replies[_chunks(len(record_keys)) : -1]:
                beats.extend(cast("list[bytes | None]", reply))
            seconds, micros = replies[-1]
            now_ms = seconds * 1000 + micros // 1000
        return Reading(values, beats, now_ms)

    async def read_one(self, task_id: str) -> tuple[bytes | None, bytes | None, int]:
        """One task's record, its heartbeat and Redis's clock, in one round trip."""
        reading = await self.read_many([task_id], [task_id])
        return reading.records[0], reading.beats[0], reading.now_ms


def _chunks(count: int) -> int:
    return -(-count // MGET_CHUNK)
