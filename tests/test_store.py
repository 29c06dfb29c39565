"""One-off reads of task records: the reads asked for together share one MGET, each one
still reads what Redis held after it asked, and a failure or a cancellation reaches only
the reads it concerns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from taskcast.cli.devstack import free_port
from taskcast.store import ResultStore
from tests import env


@pytest.fixture
async def store() -> AsyncIterator[ResultStore]:
    redis = Redis.from_url(env.REDIS_URL)
    yield ResultStore(redis, env.KEY_PREFIX)
    await redis.aclose()


async def _mgets_of(keys: set[str], commands: asyncio.Queue[dict[str, object]]) -> list[str]:
    """The MGETs that MONITOR saw for ``keys``, up to the ECHO that marks the end."""
    seen = []
    while (command := await commands.get())["command"] != "ECHO end-of-test":
        text = str(command["command"])
        if text.startswith("MGET") and any(key in text for key in keys):
            seen.append(text)
    return seen


async def test_reads_asked_together_share_one_mget(store: ResultStore) -> None:
    first, second, unknown = (str(uuid.uuid4()) for _ in range(3))
    await store.redis.set(store.key(first), b'{"status": "STARTED"}', ex=60)
    await store.redis.set(store.key(second), b'{"status": "SUCCESS"}', ex=60)
    await store.redis.set(store.heartbeat_key(first), b"123", ex=60)
    commands: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    monitor_client = Redis.from_url(env.REDIS_URL)
    async with monitor_client.monitor() as monitor:

        async def forward() -> None:
            async for command in monitor.listen():
                await commands.put(command)

        forwarding = asyncio.create_task(forward())
        readings = await asyncio.gather(
            store.read_one(first), store.read_one(second), store.read_one(first),
            store.read_one(unknown),
        )  # fmt: skip
        await store.redis.echo("end-of-test")
        mgets = await _mgets_of({store.key(first), store.key(second)}, commands)
        forwarding.cancel()
    await monitor_client.aclose()

    assert [(record, beat) for record, beat, _ in readings] == [
        (b'{"status": "STARTED"}', b"123"),
        (b'{"status": "SUCCESS"}', None),
        (b'{"status": "STARTED"}', b"123"),
        (None, None),
    ]
    # One round trip, each key once, the heartbeats with the records.
    assert len(mgets) == 1, mgets
    assert mgets[0].count(store.key(first)) == 1
    assert store.heartbeat_key(unknown) in mgets[0]
    # Redis's clock, the same for every read of the batch.
    assert len({now_ms for _, _, now_ms in readings}) == 1


async def test_a_read_asked_after_a_write_sees_it(store: ResultStore) -> None:
    task_id = str(uuid.uuid4())
    await store.redis.set(store.key(task_id), b"one", ex=60)
    assert (await store.read_one(task_id))[0] == b"one"
    await store.redis.set(store.key(task_id), b"two", ex=60)
    assert (await store.read_one(task_id))[0] == b"two"


async def test_redis_clock_advances_between_reads_of_time(store: ResultStore) -> None:
    task_id = str(uuid.uuid4())
    _, _, before = await store.read_one(task_id)
    (redis_seconds, redis_micros) = await store.redis.time()
    _, _, after = await store.read_one(task_id)
    redis_now = redis_seconds * 1000 + redis_micros // 1000
    # Counted from this process's clock since TIME was read: within a few ms of Redis's.
    assert before - 50 <= redis_now <= after + 50


async def test_a_failed_read_fails_every_read_of_its_batch() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    store = ResultStore(redis, env.KEY_PREFIX)
    outcomes = await asyncio.gather(
        *(store.read_one(str(uuid.uuid4())) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes
    # The next read is sent too, and fails on its own.
    with pytest.raises(RedisConnectionError):
        await store.read_one(str(uuid.uuid4()))
    await redis.aclose()


async def test_a_cancelled_read_leaves_the_others_their_answer(store: ResultStore) -> None:
    task_id = str(uuid.uuid4())
    await store.redis.set(store.key(task_id), b"record", ex=60)
    cancelled = asyncio.create_task(store.read_one(task_id))
    kept = asyncio.create_task(store.read_one(task_id))
    # One step each: both reads are queued for the same MGET, none is sent yet.
    await asyncio.sleep(0)
    cancelled.cancel()
    assert (await kept)[0] == b"record"
    with pytest.raises(asyncio.CancelledError):
        await cancelled
