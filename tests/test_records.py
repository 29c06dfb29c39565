"""Records that a task may leave and JSON tools choke on: nested hundreds or thousands of
levels deep, or holding integers past 64 bits. Each is answered for its own task, over
REST and WebSocket; the hub, and every other task, go on."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import redis

from taskcast.live.hub import Hub
from taskcast_celery import keys
from tests import env
from tests.support import final, read_until_closed, recv_json, submit, wait_for_state, ws_connect

BIG = 123456789012345678901234567890


def nested(depth: int) -> list[Any]:
    top: list[Any] = []
    inner = top
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return top


def store(client: redis.Redis, task_id: str, raw: str) -> None:
    client.set(keys.task_meta_key(env.KEY_PREFIX, task_id), raw)


def success(task_id: str, result_json: str) -> str:
    # As Celery's backend writes it: the state first.
    return (
        f'{{"status": "SUCCESS", "result": {result_json}, "traceback": null, '
        f'"task_id": "{task_id}"}}'
    )


async def test_deep_and_big_results_reach_rest_and_websocket(
    client: httpx.AsyncClient, base_url: str, redis_client: redis.Redis, hub: Hub
) -> None:
    deep, big, deepest = (str(uuid.uuid4()) for _ in range(3))
    # 300 levels: orjson reads it but will not write past 254; 2,000: nothing reads it.
    store(redis_client, deep, success(deep, json.dumps(nested(300))))
    store(redis_client, big, success(big, json.dumps({"n": BIG})))
    store(redis_client, deepest, success(deepest, "[" * 2000 + "]" * 2000))
    errors_before = hub.metrics.hub_redis_errors._value.get()

    answered = (await client.get(f"/tasks/{deep}")).json()
    assert (answered["state"], answered["final"]) == ("SUCCESS", True)
    assert answered["result"] == nested(300)
    assert (await client.get(f"/tasks/{big}")).json()["result"] == {"n": BIG}
    unread = await client.get(f"/tasks/{deepest}")
    assert unread.status_code == 200
    assert (unread.json()["state"], unread.json()["final"]) == ("SUCCESS", True)
    assert unread.json()["error"] == {
        "type": "UnreadableRecord",
        "message": "the stored record is nested too deeply to read",
    }

    for task_id in (deep, big, deepest):
        async with ws_connect(base_url, f"/ws/tasks/{task_id}", max_size=None) as ws:
            messages, code = await read_until_closed(ws)
        assert code == 1000 and [m["state"] for m in messages] == ["SUCCESS"], messages

    # Subscribed and unsubscribed again and again beside a task of its own: the hub
    # answers each time, and never falls over.
    other = await submit(client, "sleep", seconds=0)
    assert await wait_for_state(client, other, final)
    async with ws_connect(base_url, "/ws", max_size=None) as ws:
        for _ in range(20):
            await ws.send(json.dumps({"op": "subscribe", "task_id": deep}))
            assert (await recv_json(ws))["state"] == "SUCCESS"
            await ws.send(json.dumps({"op": "subscribe", "task_id": other}))
            assert (await recv_json(ws))["task_id"] == other
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
    assert hub.healthy
    assert hub.metrics.hub_redis_errors._value.get() == errors_before


async def test_the_tutorial_status_path_answers_them_too(
    client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    deep = str(uuid.uuid4())
    store(redis_client, deep, success(deep, json.dumps(nested(300))))
    answer = await client.get(f"/task-status/{deep}")
    assert answer.status_code == 200
    assert answer.json() == {"state": "SUCCESS", "result": nested(300)}
