"""A record that any transport can carry, every transport carries: the same decode, the
same encode, the same marking of what cannot be sent, on REST, ``/ws``, ``/ws/tasks/{id}``,
event streams, celery-progress over HTTP and WebSocket, and the tutorial's status path.

Before the hub handed out typed updates, the event stream parsed each frame back and
celery-progress's socket decoded and re-encoded it: a lone surrogate (Celery stores an
undecodable file name that way) or a result nested past 254 levels broke both, for
every stream after it, and celery-progress's and the tutorial's JSON answered 500 for a
result nested about 1,000 deep or holding ``[NaN, 2**70]``.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any

import httpx
import pytest
import redis

from taskcast_celery import keys
from tests import env
from tests.support import (
    Reader,
    read_events,
    read_until_closed,
    recv_json,
    write_progress,
    write_success,
    ws_connect,
)

# As Celery's JSON writes them into a record's result.
BAD_RESULTS = {
    # Python's json escapes a lone surrogate; orjson will neither read nor write one.
    "lone surrogate": json.dumps({"file": os.fsdecode(b"report-\xff.csv")}),
    # orjson reads it but will not write past 254 levels.
    "nested 300 deep": "[" * 300 + "]" * 300,
    # Python's json reads it, but writing it again passes its recursion limit.
    "nested 1000 deep": "[" * 1000 + "]" * 1000,
    # NaN (which Python's json writes) and an integer past 64 bits, side by side.
    "NaN beside 2**70": f"[NaN, {2**70}]",
}


def store_final(client: redis.Redis, task_id: str, result_json: str) -> None:
    """A SUCCESS record holding ``result_json``, written and announced as Celery's
    backend does (SET, then PUBLISH on the key's channel)."""
    key = keys.task_meta_key(env.KEY_PREFIX, task_id)
    raw = (
        f'{{"status": "SUCCESS", "result": {result_json}, "traceback": null, '
        f'"task_id": "{task_id}"}}'
    )
    client.set(key, raw)
    client.publish(key, raw)


@pytest.fixture(params=list(BAD_RESULTS), ids=list(BAD_RESULTS))
def bad_task(request: pytest.FixtureRequest, redis_client: redis.Redis) -> str:
    """A finished task whose result is one of the records JSON tools choke on."""
    task_id = str(uuid.uuid4())
    store_final(redis_client, task_id, BAD_RESULTS[request.param])
    return task_id


def assert_success(status: dict[str, Any]) -> None:
    """The task's own state, final, whatever could or could not be sent of its result."""
    assert (status["state"], status["final"]) == ("SUCCESS", True), status
    if status["error"] is not None:
        # Marked alike everywhere: what was wrong, and the result left out.
        assert status["error"]["type"] in ("UnsendableResult", "UnreadableRecord"), status
        assert status["result"] is None


async def test_rest_and_the_tutorial_and_celery_progress_answer_it(
    client: httpx.AsyncClient, bad_task: str, server_errors: list[logging.LogRecord]
) -> None:
    status = await client.get(f"/tasks/{bad_task}")
    assert status.status_code == 200
    assert_success(status.json())
    tutorial = await client.get(f"/task-status/{bad_task}")
    assert tutorial.status_code == 200
    assert tutorial.json()["state"] == "SUCCESS"
    bar = await client.get(f"/celery-progress/{bad_task}/")
    assert bar.status_code == 200
    assert (bar.json()["complete"], bar.json()["success"]) == (True, True)
    # The marking is the same on every answer: one decode, one encode.
    assert tutorial.json()["result"] == status.json()["result"] == bar.json()["result"]


async def test_every_socket_carries_it_to_its_close(
    base_url: str, bad_task: str, server_errors: list[logging.LogRecord]
) -> None:
    async with ws_connect(base_url, f"/ws/tasks/{bad_task}", max_size=None) as ws:
        messages, code = await read_until_closed(ws)
    assert code == 1000 and len(messages) == 1
    assert_success(messages[0])
    async with ws_connect(base_url, "/ws", max_size=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "task_id": bad_task}))
        assert_success(await recv_json(ws))
    async with ws_connect(base_url, f"/ws/progress/{bad_task}/", max_size=None) as ws:
        await ws.send(json.dumps({"type": "check_task_completion"}))
        bars, code = await read_until_closed(ws)
    assert code == 1000
    assert [(b["state"], b["complete"], b["success"]) for b in bars] == [("SUCCESS", True, True)]


async def test_an_event_stream_carries_it_and_the_others_on_it_go_on(
    client: httpx.AsyncClient, bad_task: str, server_errors: list[logging.LogRecord]
) -> None:
    async with client.stream("GET", f"/sse/tasks/{bad_task}") as response:
        events = await read_events(response)
    assert [event.event for event in events] == ["status", "end"]
    assert_success(events[0].message)

    # Beside a task that keeps going: every state of it after the bad record, and its final.
    other = str(uuid.uuid4())
    write_progress(other, 0, 4)
    async with client.stream("GET", f"/sse?task={other}&task={bad_task}") as response:
        reader = Reader(response)
        first_two = await reader.events(until=None, count=2)
        assert {event.message["task_id"] for event in first_two} == {other, bad_task}
        for current in range(1, 4):
            write_progress(other, current, 4)
        write_success(other)
        rest = await reader.events()
    statuses = [e.message for e in rest if e.event == "status"]
    assert statuses and statuses[-1]["task_id"] == other
    assert_success(statuses[-1])
    currents = [s["progress"]["current"] for s in statuses if s["state"] == "PROGRESS"]
    assert currents == sorted(set(currents))
    assert rest[-1].event == "end"
