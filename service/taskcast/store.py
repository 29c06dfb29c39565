"""Reads of task records from the Redis result backend, without blocking the loop."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from taskcast_celery import keys

# MGET batches stay at or under this many keys, so that no single reply grows unbounded.
MGET_CHUNK = 1000
# Seconds between reads of Redis's clock (TIME): in between, it is counted as an offset
# from this process's monotonic clock, rather than adding a command to every read.
CLOCK_REFRESH = 10.0


@dataclass(frozen=True, slots=True)
class Reading:
    """What one round trip read: task records, heartbeats, and maybe Redis's clock."""

    # The records of the task ids asked for, in their order (None: no record).
    records: list[bytes | None]
    # The heartbeats of the ids asked for them, in their order (None: no heartbeat).
    beats: list[bytes | None]
    # Redis's clock in milliseconds at the read, when heartbeats were read.
    now_ms: int | None


# One task's record, its heartbeat (None: none) and Redis's clock in milliseconds.
OneReading = tuple[bytes | None, bytes | None, int]


class RedisClock:
    """Redis's clock, the one heartbeats are written by, as an offset from this process's
    monotonic clock. Reading TIME once every ``CLOCK_REFRESH`` seconds is as good as
    reading it with every heartbeat, since stalls are judged in seconds, and it leaves
    most reads one MGET: a pipeline with TIME cost a REST read far more than a command."""

    def __init__(self) -> None:
        self._offset_ms = 0.0
        self._read_at = -math.inf

    @property
    def due(self) -> bool:
        """Whether Redis's clock should be read again."""
        return time.monotonic() - self._read_at > CLOCK_REFRESH

    def set(self, redis_now_ms: int) -> None:
        """Take in what TIME just said."""
        self._read_at = time.monotonic()
        self._offset_ms = redis_now_ms - self._read_at * 1000

    def now_ms(self) -> int:
        """Redis's clock now, in milliseconds, as last read plus the time since."""
        return int(time.monotonic() * 1000 + self._offset_ms)

    def forget(self) -> None:
        """Read it again next time: Redis may be another server now (a failover)."""
        self._read_at = -math.inf


class ResultStore:
    """Async access to the records Celery's Redis result backend keeps."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = RedisClock()
        # One-off reads waiting for the next MGET, and the MGETs in flight.
        self._queued: list[tuple[str, asyncio.Future[OneReading]]] = []
        self._sending: set[asyncio.Task[None]] = set()

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
        """Records of ``task_ids`` and heartbeats of ``beat_ids`` in one round trip: one
        MGET per chunk of keys (records and heartbeats together) and, when heartbeats are
        read and the clock is due, Redis's TIME, the clock the heartbeats were written by."""
        wanted = [self.key(task_id) for task_id in task_ids]
        wanted += [self.heartbeat_key(task_id) for task_id in beat_ids]
        read_clock = bool(beat_ids) and self.clock.due
        replies: list[Any]
        if len(wanted) <= MGET_CHUNK and not read_clock:
            # The common case, one command: a pipeline costs far more than that.
            replies = [await self.redis.mget(wanted)] if wanted else []
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(wanted), MGET_CHUNK):
                    pipe.mget(wanted[start : start + MGET_CHUNK])
                if read_clock:
                    pipe.time()
                replies = await pipe.execute()
        if read_clock:
            seconds, micros = replies.pop()
            self.clock.set(seconds * 1000 + micros // 1000)
        values = [value for reply in replies for value in cast("list[bytes | None]", reply)]
        now_ms = self.clock.now_ms() if beat_ids else None
        return Reading(values[: len(task_ids)], values[len(task_ids) :], now_ms)

    async def read_one(self, task_id: str) -> OneReading:
        """One task's record, its heartbeat and Redis's clock, in one round trip.

        The reads asked for in the same turn of the event loop go to Redis together, in
        one MGET sent after the last of them was asked for: each still reads what was
        there after it asked, and under load one round trip and one pooled connection
        serve dozens of requests instead of one."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[OneReading] = loop.create_future()
        self._queued.append((task_id, waiter))
        if len(self._queued) == 1:
            loop.call_soon(self._send_queued)
        return await waiter

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        sending = asyncio.create_task(self._read_for(queued))
        # A hard reference: the loop itself keeps only a weak one to its tasks.
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _read_for(self, queued: list[tuple[str, asyncio.Future[OneReading]]]) -> None:
        ids = list(dict.fromkeys(task_id for task_id, _ in queued))
        try:
            reading = await self.read_many(ids, ids)
        except Exception as exc:
            # Each request answers for itself (a 503), as if it had read alone.
            for _, waiter in queued:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, waiter in queued:
                waiter.cancel()
            raise
        assert reading.now_ms is not None
        found = dict(zip(ids, zip(reading.records, reading.beats, strict=True), strict=True))
        for task_id, waiter in queued:
            # A waiter is done already when its request was cancelled meanwhile.
            if not waiter.done():
                waiter.set_result((*found[task_id], reading.now_ms))

    # -- owners' tasks (taskcast_celery.owners)

    def feed_channel(self, owner: str) -> str:
        """The channel a new task of ``owner`` is announced on (its id)."""
        return keys.owner_feed_channel(self.prefix, owner)

    async def read_unfinished(self, owners: Sequence[str], most: int) -> dict[str, list[str]]:
        """The ids of each owner's unfinished tasks, at most ``most`` each (the newest),
        in one round trip; Redis's clock is read with them."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.zrevrange(keys.owner_active_key(self.prefix, owner), 0, most - 1)
            pipe.time()
            replies = await pipe.execute()
        seconds, micros = replies.pop()
        self.clock.set(seconds * 1000 + micros // 1000)
        return {
            owner: [bytes(task_id).decode() for task_id in reply]
            for owner, reply in zip(owners, replies, strict=True)
        }

    async def read_finished_since(
        self, wanted: Sequence[tuple[str, int]], most: int
    ) -> dict[tuple[str, int], list[str]]:
        """For each (owner, time) pair, the ids of the owner's tasks that ended at that
        time (Redis's clock, ms) or later, oldest first, at most ``most``; in one round
        trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner, since_ms in wanted:
                pipe.zrangebyscore(
                    keys.owner_done_key(self.prefix, owner), since_ms, "+inf", start=0, num=most
                )
            replies = await pipe.execute()
        return {
            pair: [bytes(task_id).decode() for task_id in reply]
            for pair, reply in zip(wanted, replies, strict=True)
        }
