"""Groups: a batch of tasks started together, followed as one status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import httpx
import pytest
import redis

from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from taskcast.groups import RUNNING_LIST_LIMIT, GroupTally, member_ids
from taskcast.live.hub import Hub
from taskcast.settings import Settings
from taskcast.status import decode_status
from taskcast_celery import keys
from tests import env
from tests.support import (
    demo_app,
    eventually,
    read_until_closed,
    recv_json,
    running_server,
    ws_connect,
)


async def start_group(client: httpx.AsyncClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/groups/{name}", json=body)
    assert response.status_code == 202, response.text
    reply: dict[str, Any] = response.json()
    return reply


def mixed_members(succeed: int, fail: int) -> list[dict[str, Any]]:
    """``progress`` members: some count to 3, some fail on their second step."""
    ok = {"total": 3, "step_seconds": 0.02}
    return [ok] * succeed + [{**ok, "fail_at": 2}] * fail


async def test_a_group_of_twenty_adds_up_and_pushes_its_final_once(
    client: httpx.AsyncClient, base_url: str, hub: Hub
) -> None:
    reply = await start_group(client, "progress", {"tasks": mixed_members(15, 5)})
    group_id, task_ids = reply["group_id"], reply["task_ids"]
    assert len(task_ids) == len(set(task_ids)) == 20
    assert reply["ws_url"].endswith(f"/ws/groups/{group_id}")
    failing = set(task_ids[15:])
    async with ws_connect(base_url, f"/ws/groups/{group_id}") as ws:
        messages, code = await read_until_closed(ws, within=60)
    assert code == 1000
    assert all(m["type"] == "group" and m["group_id"] == group_id for m in messages)
    finals = [m for m in messages if m["final"]]
    assert finals == [messages[-1]]
    final = finals[0]
    assert final["state"] == "FAILURE"
    assert (final["size"], final["done"]) == (20, 20)
    assert final["states"] == {"SUCCESS": 15, "FAILURE": 5}
    # 3 of 3 for each success; a failed member keeps the 1 of 3 it had reported.
    assert final["progress"] == {"current": 50, "total": 60, "percent": 100.0, "eta_s": 0.0}
    assert {f["task_id"] for f in final["failures"]} == failing
    assert {(f["state"], f["error"]["type"], f["error"]["message"]) for f in final["failures"]} == {
        ("FAILURE", "RuntimeError", "failed at step 2 of 3")
    }
    assert (final["stalled"], final["stalled_tasks"]) == (False, [])
    # Done never goes back, and every message in between adds up.
    dones = [m["done"] for m in messages]
    assert dones == sorted(dones)
    for message in messages:
        assert sum(message["states"].values()) == 20
        assert len(message["failures"]) == message["states"].get("FAILURE", 0)
    # REST answers the same object, and the members are tasks like any other.
    rest = (await client.get(f"/groups/{group_id}")).json()
    assert rest == {key: value for key, value in final.items() if key != "type"}
    member = (await client.get(f"/tasks/{task_ids[0]}")).json()
    assert (member["state"], member["result"]) == ("SUCCESS", {"status": "completed"})
    # The hub let go of the group and of every member it watched for it.
    await eventually(
        lambda: (hub.watched_groups, hub.watched),
        lambda watched: group_id not in watched[0] and not watched[1] & set(task_ids),
    )


async def test_the_multiplexed_socket_follows_a_group_next_to_a_task(
    client: httpx.AsyncClient, base_url: str
) -> None:
    group = await start_group(client, "progress", {"count": 3, "params": {"total": 2}})
    group_id = group["group_id"]
    task = (await client.post("/tasks/sleep", json={"seconds": 0})).json()["task_id"]
    async with ws_connect(base_url, "/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "group_id": group_id.upper()}))
        await ws.send(json.dumps({"op": "subscribe", "task_id": task}))
        group_messages: list[dict[str, Any]] = []
        task_final = None
        while not (group_messages and group_messages[-1]["final"] and task_final):
            message = await recv_json(ws, within=30)
            if message["type"] == "group":
                group_messages.append(message)
            elif message["final"]:
                task_final = message
        # The final ended the group's subscription: nothing of it follows the pong.
        await ws.send('{"op": "ping"}')
        assert await recv_json(ws) == {"type": "pong"}
        await ws.send(json.dumps({"op": "unsubscribe", "group_id": group_id}))
        assert await recv_json(ws) == {"type": "unsubscribed", "group_id": group_id}
    assert {m["group_id"] for m in group_messages} == {group_id}
    assert [m["final"] for m in group_messages].count(True) == 1
    assert group_messages[-1]["states"] == {"SUCCESS": 3}
    assert group_messages[-1]["progress"]["current"] == 6
    assert task_final["state"] == "SUCCESS"


async def test_a_subscriber_who_comes_late_gets_the_group_as_it_is(
    client: httpx.AsyncClient, base_url: str
) -> None:
    group_id = (await start_group(client, "sleep", {"count": 2, "params": {"seconds": 0}}))[
        "group_id"
    ]
    final = await eventually(
        lambda: client.get(f"/groups/{group_id}"), lambda r: r.json()["final"], within=30
    )
    async with ws_connect(base_url, f"/ws/groups/{group_id}") as ws:
        messages, code = await read_until_closed(ws)
    assert code == 1000
    assert messages == [{"type": "group", **final.json()}]
    assert messages[0]["state"] == "SUCCESS"
    # Members report no progress: no sums, but the share of work done still shows.
    assert messages[0]["progress"] == {
        "current": None, "total": None, "percent": 100.0, "eta_s": 0.0
    }  # fmt: skip


async def test_cancelling_a_group_revokes_every_unfinished_member(
    client: httpx.AsyncClient, base_url: str
) -> None:
    group = await start_group(client, "sleep", {"count": 3, "params": {"seconds": 30}})
    group_id = group["group_id"]
    async with ws_connect(base_url, "/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "group_id": group_id}))
        first = await recv_json(ws)
        assert (first["type"], first["final"]) == ("group", False)
        response = await client.delete(f"/groups/{group_id}")
        assert response.status_code == 202, response.text
        assert sorted(response.json()["revoked"]) == sorted(group["task_ids"])
        message = first
        while not message["final"]:
            message = await recv_json(ws, within=30)
    assert (message["state"], message["states"]) == ("REVOKED", {"REVOKED": 3})
    assert len(message["failures"]) == 3
    again = await client.delete(f"/groups/{group_id}")
    assert (again.status_code, again.json()["error"]) == (409, "already_final")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "give count (with params) or tasks: the group's members"),
        ({"count": 2, "tasks": [{}]}, "give count (with params) or tasks, not both"),
        ({"count": 0}, "count: Input should be greater than or equal to 1"),
        ({"count": 1001}, "a group may have at most 1000 members, got 1001"),
        ({"tasks": []}, "tasks: List should have at least 1 item"),
        ({"tasks": [{"total": 3}, {"total": 0}]}, "tasks.1.total: Input should be greater"),
        ({"tasks": [{"total": 3, "fail_at": 4}]}, "fail_at must be at most total (3), got 4"),
        ({"count": 2, "params": {"nope": 1}}, "params.nope: Extra inputs are not permitted"),
        ({"tasks": [{}], "params": {}}, "params goes with count"),
        ({"count": 2, "extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
async def test_bad_group_requests_are_refused_and_queue_nothing(
    client: httpx.AsyncClient, redis_client: redis.Redis, body: dict[str, Any], detail: str
) -> None:
    before = set(redis_client.scan_iter(match=keys.group_meta_key(env.KEY_PREFIX, "*")))
    response = await client.post("/groups/progress", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_params"
    assert detail in response.json()["detail"]
    after = set(redis_client.scan_iter(match=keys.group_meta_key(env.KEY_PREFIX, "*")))
    assert after == before


async def test_unknown_and_malformed_groups_are_named(
    client: httpx.AsyncClient, base_url: str
) -> None:
    unknown = str(uuid.uuid4())
    response = await client.get(f"/groups/{unknown}")
    assert (response.status_code, response.json()["error"]) == (404, "unknown_group")
    response = await client.get("/groups/not-a-uuid")
    assert (response.status_code, response.json()["error"]) == (422, "invalid_group_id")
    response = await client.post("/groups/dance", json={"count": 1})
    assert (response.status_code, response.json()["error"]) == (404, "unknown_task_name")
    async with ws_connect(base_url, f"/ws/groups/{unknown}") as ws:
        messages, code = await read_until_closed(ws)
    assert code == 4404
    assert [m["code"] for m in messages] == ["unknown_group"]
    async with ws_connect(base_url, "/ws/groups/nope") as ws:
        messages, code = await read_until_closed(ws)
    assert (code, [m["code"] for m in messages]) == (4422, ["invalid_group_id"])
    async with ws_connect(base_url, "/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "group_id": unknown}))
        error = await recv_json(ws)
        assert (error["code"], error["group_id"]) == ("unknown_group", unknown)
        # The socket stays open for anything else.
        await ws.send('{"op": "ping"}')
        assert await recv_json(ws) == {"type": "pong"}


# -- the tally, on its own ------------------------------------------------------------

MEMBERS = [str(uuid.UUID(int=n)) for n in range(1, 4)]


def status(task_id: str, **meta: Any) -> dict[str, Any]:
    return decode_status(task_id, json.dumps(meta).encode())


def feed(tally: GroupTally, task_id: str, **meta: Any) -> None:
    """Give ``tally`` a member's record, as the hub and REST do."""
    raw = json.dumps({**meta, "task_id": task_id}).encode()
    tally.update(task_id, decode_status(task_id, raw), raw)


def test_a_member_that_fails_keeps_its_last_progress_in_the_sums() -> None:
    tally = GroupTally("g", MEMBERS)
    for task_id in MEMBERS:
        feed(tally, task_id, status="SENT", result=None)
    assert (tally.status()["state"], tally.status()["progress"]["current"]) == ("SENT", None)
    feed(tally, MEMBERS[0], status="PROGRESS", result={"current": 2, "total": 4})
    feed(tally, MEMBERS[1], status="PROGRESS", result={"current": 1, "total": 4})
    running = tally.status()
    assert running["state"] == "PROGRESS"
    assert (running["progress"]["current"], running["progress"]["total"]) == (3, 8)
    # Mean share of work: (0.5 + 0.25 + 0) / 3.
    assert running["progress"]["percent"] == 25.0
    # The final record keeps the last progress (taskcast_celery.backend), the status does not.
    failure = {"exc_type": "ValueError", "exc_message": ["bad row"]}
    kept = {"current": 1, "total": 4}
    feed(tally, MEMBERS[1], status="FAILURE", result=failure, progress=kept)
    failed = tally.status()
    assert (failed["progress"]["current"], failed["progress"]["total"]) == (3, 8)
    error = {"type": "ValueError", "message": "bad row"}
    assert failed["failures"] == [{"task_id": MEMBERS[1], "state": "FAILURE", "error": error}]
    assert (failed["done"], failed["final"]) == (1, False)
    # Cancelled before it reported anything: it adds nothing to the sums.
    feed(tally, MEMBERS[2], status="REVOKED", result={"exc_type": "TaskRevokedError"})
    assert (tally.status()["progress"]["current"], tally.status()["progress"]["total"]) == (3, 8)


def test_the_final_state_says_how_the_group_ended() -> None:
    def ended(*states: str) -> str:
        tally = GroupTally("g", MEMBERS[: len(states)])
        for task_id, state in zip(MEMBERS, states, strict=False):
            tally.update(task_id, status(task_id, status=state, result=None))
        final = tally.status()
        assert final["final"] and final["progress"]["percent"] == 100.0
        return str(final["state"])

    assert ended("SUCCESS", "SUCCESS") == "SUCCESS"
    assert ended("SUCCESS", "REVOKED") == "REVOKED"
    assert ended("REVOKED", "FAILURE", "SUCCESS") == "FAILURE"
    # A member with no record at all cannot be called a success.
    tally = GroupTally("g", MEMBERS[:1])
    tally.update(MEMBERS[0], None)
    assert (tally.status()["state"], tally.status()["states"]) == ("FAILURE", {"UNKNOWN": 1})


def test_stalled_members_are_listed_until_they_run_again() -> None:
    tally = GroupTally("g", MEMBERS[:2])
    running = status(MEMBERS[0], status="PROGRESS", result={"current": 1, "total": 2})
    tally.update(MEMBERS[0], {**running, "stalled": True})
    tally.update(MEMBERS[1], status(MEMBERS[1], status="SENT", result=None))
    assert (tally.status()["stalled"], tally.status()["stalled_tasks"]) == (True, [MEMBERS[0]])
    tally.update(MEMBERS[0], running)
    assert (tally.status()["stalled"], tally.status()["stalled_tasks"]) == (False, [])


def test_celerys_group_record_gives_the_member_ids() -> None:
    record = {"result": [["g", None], [[[MEMBERS[0], None], None], [[MEMBERS[1], None], None]]]}
    assert member_ids(json.dumps(record).encode()) == MEMBERS[:2]
    assert member_ids(b"not json") is None
    assert member_ids(b'{"result": 5}') is None
    assert member_ids(b'{"result": [["g", null], [7]]}') is None


def test_a_running_group_lists_its_first_failures_and_the_final_lists_all() -> None:
    members = [str(uuid.UUID(int=n)) for n in range(1, 31)]
    tally = GroupTally("g", members)
    failure = {"exc_type": "ValueError", "exc_message": ["bad"]}
    for task_id in members[:-1]:
        feed(tally, task_id, status="FAILURE", result=failure)
    feed(tally, members[-1], status="PROGRESS", result={"current": 1, "total": 2})
    running = tally.status()
    assert running["states"] == {"FAILURE": 29, "PROGRESS": 1}
    assert [f["task_id"] for f in running["failures"]] == members[:RUNNING_LIST_LIMIT]
    feed(tally, members[-1], status="FAILURE", result=failure)
    assert [f["task_id"] for f in tally.status()["failures"]] == members


async def test_a_crowd_subscribing_to_a_new_group_at_once_is_served_whole(
    client: httpx.AsyncClient, base_url: str
) -> None:
    # Each of them reads the group's record before the hub knows it: more reads at once
    # than the Redis pool has connections, which must wait for one, not fail.
    group_id = (await start_group(client, "sleep", {"count": 2, "params": {"seconds": 0}}))[
        "group_id"
    ]
    frame = json.dumps({"op": "subscribe", "group_id": group_id})
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(ws_connect(base_url, "/ws")) for _ in range(150)]
        await asyncio.gather(*(ws.send(frame) for ws in sockets))
        firsts = await asyncio.gather(*(recv_json(ws, within=30) for ws in sockets))
    assert {(m["type"], m["group_id"]) for m in firsts} == {("group", group_id)}


async def test_a_group_that_cannot_be_read_is_an_error_to_retry(
    redis_client: redis.Redis,
) -> None:
    # Nothing listens on this port: every Redis call fails at once.
    dead = demo_app(result_backend_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(settings=Settings(), celery_app=dead)
    group_id = str(uuid.uuid4())
    async with running_server(app) as url:
        async with ws_connect(url, "/ws") as ws:
            await ws.send(json.dumps({"op": "subscribe", "group_id": group_id}))
            error = await recv_json(ws)
            assert (error["code"], error["group_id"]) == ("unavailable", group_id)
            await ws.send('{"op": "ping"}')
            assert await recv_json(ws) == {"type": "pong"}
        async with ws_connect(url, f"/ws/groups/{group_id}") as ws:
            messages, code = await read_until_closed(ws)
        assert (code, [m["code"] for m in messages]) == (1013, ["unavailable"])
