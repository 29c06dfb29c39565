"""Whose tasks: ``taskcast.owned_by`` at dispatch, the owner and tags on every status, and
an owner's live feed on ``/ws``, with the session's real worker, Redis and uvicorn."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

import taskcast
from taskcast.app import create_app
from taskcast.live.hub import Hub
from taskcast_celery import keys
from taskcast_celery.owners import OwnerError, Ownership
from tests import env
from tests.owning import KEY, QUICK, SECRET, new_owner, start_owned
from tests.support import (
    eventually,
    read_until_closed,
    recv_json,
    running_server,
    session_app,
    settings_with,
    small_window_socket,
    write_progress,
    write_success,
    ws_connect,
)


async def subscribe_feed(ws: ClientConnection, owner_name: str, **extra: Any) -> dict[str, Any]:
    """Subscribe to a feed; its first answer (the ``feed`` message)."""
    await ws.send(json.dumps({"op": "subscribe", "feed": owner_name, **extra}))
    answer = await recv_json(ws)
    assert answer["type"] == "feed" and answer["feed"] == owner_name, answer
    return answer


async def statuses_until_final(ws: ClientConnection, task_id: str) -> list[dict[str, Any]]:
    """The statuses of ``task_id`` on a feed socket, up to its final."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while not (seen and seen[-1]["final"]):
            message = await recv_json(ws, within=20)
            if message.get("task_id") == task_id:
                seen.append(message)
    return seen


async def test_every_status_of_an_owned_task_carries_its_owner_and_tags(
    client: httpx.AsyncClient, base_url: str, worker: object
) -> None:
    me = new_owner()
    task_id = start_owned(me, tags=("report", "q3"))
    # The SENT record already, before any worker ran it.
    async with ws_connect(base_url, f"/ws/tasks/{task_id}") as ws:
        messages, code = await read_until_closed(ws)
    assert code == 1000 and messages[-1]["state"] == "SUCCESS"
    for message in messages:
        assert (message["owner"], message["tags"]) == (me, ["report", "q3"]), message
    body = (await client.get(f"/tasks/{task_id}")).json()
    assert (body["owner"], body["tags"]) == (me, ["report", "q3"])


async def test_a_task_without_an_owner_says_nothing_of_one(client: httpx.AsyncClient) -> None:
    task_id = str(session_app().tasks["taskcast.progress"].delay(**QUICK).id)
    body = await eventually(lambda: client.get(f"/tasks/{task_id}"), lambda r: r.json()["final"])
    assert "owner" not in body.json() and "tags" not in body.json()


async def test_a_feed_answers_with_the_unfinished_tasks_then_follows_new_ones(
    base_url: str, hub: Hub
) -> None:
    me = new_owner()
    # Queued behind nothing but slow enough to be unfinished when the feed is asked.
    running = start_owned(me, total=40, step_seconds=0.05)
    async with ws_connect(base_url, "/ws") as ws:
        first = await subscribe_feed(ws, me)
        assert [status["task_id"] for status in first["tasks"]] == [running]
        assert first["tasks"][0]["owner"] == me and isinstance(first["at"], int)
        # A task started after the subscribe joins the feed by its announcement.
        newer = start_owned(me)
        seen = await statuses_until_final(ws, newer)
    assert seen[0]["owner"] == me and seen[-1]["state"] == "SUCCESS"
    await eventually(lambda: hub.watched_feeds, lambda feeds: me not in feeds)


async def test_owners_never_see_each_others_tasks(base_url: str) -> None:
    base = new_owner()
    # One owner's name is the start of the other's: still two owners.
    short, long = base, base + "2"
    async with ws_connect(base_url, "/ws") as ws_short, ws_connect(base_url, "/ws") as ws_long:
        await subscribe_feed(ws_short, short)
        await subscribe_feed(ws_long, long)
        theirs = start_owned(long)
        mine = start_owned(short)
        seen_short = await statuses_until_final(ws_short, mine)
        seen_long = await statuses_until_final(ws_long, theirs)
        # Each socket also saw nothing of the other's task meanwhile (it would have come
        # before its own final, in the order the hub read them).
    assert all(status["owner"] == short for status in seen_short)
    assert all(status["owner"] == long for status in seen_long)


async def test_a_resumed_feed_gets_the_finals_it_missed(base_url: str) -> None:
    me = new_owner()
    async with ws_connect(base_url, "/ws") as ws:
        answer = await subscribe_feed(ws, me)
    # Disconnected: a task of the owner starts and ends meanwhile.
    missed = start_owned(me)
    meta = keys.task_meta_key(env.KEY_PREFIX, missed)
    backend = session_app().backend

    def ended() -> bool:
        raw = backend.client.get(meta)
        return raw is not None and json.loads(raw)["status"] == "SUCCESS"

    await eventually(ended, bool, within=20)
    async with ws_connect(base_url, "/ws") as ws:
        resumed = await subscribe_feed(ws, me, since=answer["at"])
        fresh = await subscribe_feed(ws, new_owner())
    replayed = {status["task_id"]: status["state"] for status in resumed["tasks"]}
    assert replayed == {missed: "SUCCESS"}
    assert fresh["tasks"] == []


async def test_cancelling_an_owned_task_keeps_its_owner(
    client: httpx.AsyncClient, base_url: str
) -> None:
    me = new_owner()
    task_id = start_owned(me, tags=("x",), total=200, step_seconds=0.05)
    assert (await client.delete(f"/tasks/{task_id}")).status_code == 202
    body = (await client.get(f"/tasks/{task_id}")).json()
    assert body["state"] == "REVOKED"
    assert (body["owner"], body["tags"]) == (me, ["x"])


@pytest.mark.parametrize(
    "frame, code",
    [
        ({"op": "subscribe", "feed": "user/42"}, "invalid_feed"),
        ({"op": "subscribe", "feed": ""}, "invalid_feed"),
        ({"op": "subscribe", "feed": "x" * 129}, "invalid_feed"),
        ({"op": "subscribe", "feed": 42}, "invalid_feed"),
        ({"op": "subscribe", "feed": "user:1", "task_id": str(uuid.uuid4())}, "invalid_message"),
        ({"op": "subscribe", "task_id": str(uuid.uuid4()), "since": 5}, "invalid_message"),
        ({"op": "subscribe", "feed": "user:1", "since": -1}, "invalid_message"),
    ],
)
async def test_a_bad_feed_frame_is_answered_and_the_socket_stays(
    base_url: str, frame: dict[str, Any], code: str
) -> None:
    async with ws_connect(base_url, "/ws") as ws:
        await ws.send(json.dumps(frame))
        answer = await recv_json(ws)
        assert (answer["type"], answer["code"]) == ("error", code), answer
        await ws.send('{"op": "ping"}')
        assert (await recv_json(ws))["type"] == "pong"


def test_owned_by_checks_what_it_is_given() -> None:
    for wrong in ("", "user/42", "x" * 129, "a b"):
        with pytest.raises(OwnerError), taskcast.owned_by(wrong):
            pass
    with pytest.raises(OwnerError, match="tags"), taskcast.owned_by("u", tags="report"):
        pass
    with pytest.raises(OwnerError), taskcast.owned_by("u", webhook="ftp://example.com/"):
        pass
    with taskcast.owned_by("user:1", tags=["a", "a", "b"]) as ownership:
        assert ownership.tags == ("a", "b")


async def test_a_feed_reader_that_stops_reading_does_not_delay_others(worker: object) -> None:
    """A stalled feed reader holds its own socket; a fast one still gets every final."""
    me = new_owner()
    backend = session_app().backend
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for task_id in ids:
        backend.record_sent(task_id, "bench", Ownership(me))
        write_progress(task_id, 0, 1000)
    app = create_app(session_app(), settings=settings_with(slow_client_timeout=60))
    big = "x" * 3000  # large frames fill the stalled reader's buffers quickly
    async with (
        running_server(app, send_buffer=4096) as url,
        ws_connect(
            url, "/ws", max_queue=1, sock=small_window_socket(url), close_timeout=0.2
        ) as stalled,
        ws_connect(url, "/ws") as fast,
    ):
        await stalled.send(json.dumps({"op": "subscribe", "feed": me}))
        first = await subscribe_feed(fast, me)
        assert {status["task_id"] for status in first["tasks"]} == set(ids)
        # The stalled reader never reads again. Flood it (bounded), then end every task.
        for current in range(1, 40):
            await asyncio.to_thread(
                lambda c=current: [write_progress(t, c, 1000, big) for t in ids]
            )
        hub: Hub = app.state.taskcast.hub
        await eventually(lambda: [s for s in hub.connections if s.sending_since], bool)
        await asyncio.to_thread(lambda: [write_success(t) for t in ids])
        finals: set[str] = set()
        async with asyncio.timeout(15):
            while len(finals) < len(ids):
                message = await recv_json(fast)
                if message["type"] == "status" and message["final"]:
                    assert message["owner"] == me and message["task_id"] not in finals
                    finals.add(message["task_id"])
    assert finals == set(ids)


async def test_with_a_secret_a_feed_opens_only_with_its_own_token(worker: object) -> None:
    me = new_owner()
    app = create_app(session_app(), settings=settings_with(secret=SECRET, api_keys=(KEY,)))
    task_token = taskcast.sign_watch_token(str(uuid.uuid4()), secret=SECRET)
    async with running_server(app) as url, ws_connect(url, "/ws") as ws:
        for token in (
            None,
            taskcast.sign_feed_token(me[:-1], secret=SECRET),  # a prefix of the owner
            taskcast.sign_feed_token(me + "2", secret=SECRET),  # the owner, extended
            task_token,
            taskcast.sign_feed_token(me, secret="t" * 40),  # another service's secret
        ):
            frame = {"op": "subscribe", "feed": me, **({"token": token} if token else {})}
            await ws.send(json.dumps(frame))
            refused = await recv_json(ws)
            assert (refused["code"], refused["feed"]) == ("unauthorized", me), refused
        await subscribe_feed(ws, me, token=taskcast.sign_feed_token(me, secret=SECRET))
        # An API key in the handshake opens any feed.
        async with ws_connect(
            url, "/ws", additional_headers={"Authorization": f"Bearer {KEY}"}
        ) as keyed:
            await subscribe_feed(keyed, new_owner())
