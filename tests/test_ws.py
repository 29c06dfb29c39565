"""The WebSocket channel against a real uvicorn, real clients, a real worker and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import uuid
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed

from taskcast.app import create_app
from taskcast.live.hub import Hub
from taskcast_celery import keys
from tests import env
from tests.support import (
    assert_progress_in_order,
    eventually,
    read_until_closed,
    recv_json,
    running_record,
    running_server,
    settings_with,
    small_window_socket,
    submit,
    wait_for_state,
    write_progress,
    write_success,
    ws_connect,
)


async def test_task_socket_streams_snapshot_progress_and_final_then_closes(
    client: httpx.AsyncClient, base_url: str, hub: Hub
) -> None:
    task_id = await submit(client, "progress", total=8, step_seconds=0.05)
    async with ws_connect(base_url, f"/ws/tasks/{task_id}") as ws:
        messages, code = await read_until_closed(ws)
    assert code == 1000
    assert all(m["type"] == "status" and m["task_id"] == task_id for m in messages)
    assert messages[0]["state"] in {"SENT", "STARTED", "PROGRESS"}
    assert_progress_in_order(messages)
    assert messages[-1]["state"] == "SUCCESS"
    assert messages[-1]["progress"]["percent"] == 100.0
    assert set(messages[-1]) == {
        "type", "task_id", "state", "final", "stalled", "progress", "result", "error"
    }  # fmt: skip
    await eventually(lambda: hub.watched, lambda w: task_id not in w)


async def test_progress_statuses_carry_the_hubs_rate_and_eta(
    client: httpx.AsyncClient, base_url: str
) -> None:
    task_id = await submit(client, "progress", total=20, step_seconds=0.05)
    async with ws_connect(base_url, f"/ws/tasks/{task_id}") as ws:
        messages, code = await read_until_closed(ws)
    assert code == 1000
    paced = [
        m["progress"]
        for m in messages
        if m["state"] == "PROGRESS" and m["progress"]["rate"] is not None
    ]
    # The hub read the task at least twice while it ran for a second (push, or the poll).
    assert paced, messages
    for progress in paced:
        assert progress["rate"] > 0 and progress["eta_s"] >= 0
        left = (20 - progress["current"]) / progress["rate"]
        assert progress["eta_s"] == pytest.approx(left, rel=0.01, abs=0.1)
    # One step every 50 ms is 20 a second; a loaded machine only slows the worker down,
    # and read times jitter: a factor of ten either way is room enough.
    assert 2 < paced[-1]["rate"] < 200
    # The final status has no pace and nothing left; it is the one REST answers too.
    final = messages[-1]
    assert final["state"] == "SUCCESS"
    assert (final["progress"]["rate"], final["progress"]["eta_s"]) == (None, 0.0)
    rest = (await client.get(f"/tasks/{task_id}")).json()
    assert {"type": "status", **rest} == final


async def test_task_socket_for_an_ended_task_sends_the_final_once(
    client: httpx.AsyncClient, base_url: str
) -> None:
    task_id = await submit(client, "sleep", seconds=0)
    await wait_for_state(client, task_id, lambda s: s["final"])
    async with ws_connect(base_url, f"/ws/tasks/{task_id}") as ws:
        messages, code = await read_until_closed(ws)
    assert [m["state"] for m in messages] == ["SUCCESS"]
    assert code == 1000


async def test_task_socket_unknown_and_malformed_ids(base_url: str) -> None:
    missing = str(uuid.uuid4())
    async with ws_connect(base_url, f"/ws/tasks/{missing}") as ws:
        messages, code = await read_until_closed(ws)
    assert messages == [
        {"type": "error", "code": "unknown_task", "detail": f"no task with id {missing}",
         "task_id": missing}
    ]  # fmt: skip
    assert code == 4404
    async with ws_connect(base_url, "/ws/tasks/not-a-uuid") as ws:
        messages, code = await read_until_closed(ws)
    assert [m["code"] for m in messages] == ["invalid_task_id"]
    assert code == 4422


async def test_task_socket_answers_ping_and_rejects_other_ops(
    client: httpx.AsyncClient, base_url: str
) -> None:
    task_id = await submit(client, "sleep", seconds=30)
    try:
        async with ws_connect(base_url, f"/ws/tasks/{task_id}") as ws:

            async def reply() -> dict[str, Any]:
                # The task's own statuses (STARTED, say) may come in between.
                while (message := await recv_json(ws))["type"] == "status":
                    pass
                return message

            assert (await recv_json(ws))["type"] == "status"
            await ws.send(json.dumps({"op": "subscribe", "task_id": str(uuid.uuid4())}))
            error = await reply()
            assert (error["type"], error["code"]) == ("error", "unknown_op")
            await ws.send('{"op": "ping"}')
            assert await reply() == {"type": "pong"}
    finally:
        await client.delete(f"/tasks/{task_id}")


async def test_multiplexed_subscribe_unsubscribe_ping(
    client: httpx.AsyncClient, base_url: str, hub: Hub
) -> None:
    task_id = await submit(client, "sleep", seconds=30)
    try:
        async with ws_connect(base_url, "/ws") as ws:
            await ws.send('{"op": "ping"}')
            assert await recv_json(ws) == {"type": "pong"}
            await ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
            snapshot = await recv_json(ws)
            assert (snapshot["type"], snapshot["task_id"]) == ("status", task_id)
            assert task_id in hub.watched
            # Subscribing again re-sends the current status (the acknowledgement).
            await ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
            again = await recv_json(ws)
            assert (again["type"], again["task_id"]) == ("status", task_id)
            await ws.send(json.dumps({"op": "unsubscribe", "task_id": task_id}))
            # Statuses still in flight may precede the reply, none may follow it.
            while (reply := await recv_json(ws))["type"] == "status":
                pass
            assert reply == {"type": "unsubscribed", "task_id": task_id}
            assert task_id not in hub.watched
            await client.delete(f"/tasks/{task_id}")
            await ws.send('{"op": "ping"}')
            assert await recv_json(ws) == {"type": "pong"}  # and no REVOKED before it
    finally:
        await client.delete(f"/tasks/{task_id}")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_message"),
        ("[]", "invalid_message"),
        ('{"task_id": "x"}', "invalid_message"),
        ('{"op": "explode"}', "unknown_op"),
        ('{"op": "subscribe", "task_id": "nope"}', "invalid_task_id"),
        ('{"op": "unsubscribe"}', "invalid_task_id"),
        ('{"op": "ping", "extra": true}', "invalid_message"),
        (b"\x00binary", "invalid_message"),
    ],
)
async def test_multiplexed_errors_keep_the_socket_open(
    base_url: str, frame: str | bytes, code: str
) -> None:
    async with ws_connect(base_url, "/ws") as ws:
        await ws.send(frame)
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", code)
        assert error["detail"]
        await ws.send('{"op": "ping"}')
        assert await recv_json(ws) == {"type": "pong"}


async def test_multiplexed_unknown_task(base_url: str) -> None:
    missing = str(uuid.uuid4())
    async with ws_connect(base_url, "/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "task_id": missing}))
        error = await recv_json(ws)
        assert (error["code"], error["task_id"]) == ("unknown_task", missing)
        await ws.send('{"op": "ping"}')
        assert await recv_json(ws) == {"type": "pong"}


async def test_frames_over_the_limit_close_1009(base_url: str) -> None:
    async with ws_connect(base_url, "/ws") as ws:
        await ws.send('{"op": "ping", "pad": "' + "x" * 5000 + '"}')
        messages, code = await read_until_closed(ws)
    assert (messages, code) == ([], 1009)


async def test_too_many_subscriptions(client: httpx.AsyncClient) -> None:
    app = create_app(settings=settings_with(max_subscriptions=2))
    ids = [await submit(client, "sleep", seconds=30) for _ in range(3)]
    try:
        async with running_server(app) as url, ws_connect(url, "/ws") as ws:
            for task_id in ids[:2]:
                await ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
                assert (await recv_json(ws))["task_id"] == task_id
            await ws.send(json.dumps({"op": "subscribe", "task_id": ids[2]}))
            while (error := await recv_json(ws))["type"] == "status":
                pass
            assert (error["code"], error["task_id"]) == ("too_many_subscriptions", ids[2])
            # Freeing a slot makes room again.
            await ws.send(json.dumps({"op": "unsubscribe", "task_id": ids[0]}))
            await ws.send(json.dumps({"op": "subscribe", "task_id": ids[2]}))
            while (status := await recv_json(ws))["type"] != "status" or (
                status["task_id"] != ids[2]
            ):
                pass
    finally:
        for task_id in ids:
            await client.delete(f"/tasks/{task_id}")


async def test_two_hundred_subscribers_all_get_the_final(
    client: httpx.AsyncClient, base_url: str, hub: Hub
) -> None:
    task_id = await submit(client, "progress", total=10, step_seconds=0.1)

    async def follow() -> tuple[list[dict[str, Any]], int | None]:
        async with ws_connect(base_url, f"/ws/tasks/{task_id}") as ws:
            return await read_until_closed(ws, within=30)

    results = await asyncio.gather(*(follow() for _ in range(200)))
    for messages, code in results:
        assert code == 1000
        assert_progress_in_order(messages)
        assert messages[-1]["state"] == "SUCCESS"
    await eventually(lambda: hub.connections, lambda c: not c)


async def test_fifty_tasks_on_one_socket(
    client: httpx.AsyncClient, base_url: str, hub: Hub
) -> None:
    ids = [await submit(client, "progress", total=2, step_seconds=0.01) for _ in range(50)]
    finals: dict[str, int] = dict.fromkeys(ids, 0)
    seen: dict[str, list[dict[str, Any]]] = {task_id: [] for task_id in ids}
    async with ws_connect(base_url, "/ws") as ws:
        for task_id in ids:
            await ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        async with asyncio.timeout(60):
            while not all(finals.values()):
                message = await recv_json(ws)
                assert message["type"] == "status", message
                seen[message["task_id"]].append(message)
                if message["final"]:
                    finals[message["task_id"]] += 1
        # Finals are sent once: a ping after them is answered with nothing in between.
        await ws.send('{"op": "ping"}')
        assert await recv_json(ws) == {"type": "pong"}
    assert set(finals.values()) == {1}
    for statuses in seen.values():
        assert_progress_in_order(statuses)
        assert statuses[-1]["state"] == "SUCCESS"
    await eventually(lambda: hub.watched, lambda w: not (w & set(ids)))


async def test_disconnect_drops_every_subscription(
    client: httpx.AsyncClient, base_url: str, hub: Hub
) -> None:
    ids = [await submit(client, "sleep", seconds=30) for _ in range(3)]
    try:
        async with ws_connect(base_url, "/ws") as ws:
            for task_id in ids:
                await ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
                await recv_json(ws)
            async with ws_connect(base_url, f"/ws/tasks/{ids[0]}") as single:
                await recv_json(single)
                assert set(ids) <= hub.watched
        await eventually(lambda: hub.watched, lambda w: not (w & set(ids)))
        assert not hub.connections
    finally:
        for task_id in ids:
            await client.delete(f"/tasks/{task_id}")


async def test_a_client_that_stops_reading_does_not_delay_others() -> None:
    """A stalled client holds its own socket; a fast one still gets every final."""
    app = create_app(settings=settings_with(slow_client_timeout=60))
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for task_id in ids:
        write_progress(task_id, 0, 1000)
    big = "x" * 3000  # large frames fill the stalled client's buffers quickly
    async with (
        running_server(app, send_buffer=4096) as url,
        ws_connect(
            url, "/ws", max_queue=1, sock=small_window_socket(url), close_timeout=0.2
        ) as stalled,
        ws_connect(url, "/ws") as fast,
    ):
        for ws in (stalled, fast):
            for task_id in ids:
                await ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        # The stalled client never reads again. Flood it (bounded), then finish every task.
        for current in range(1, 40):
            await asyncio.to_thread(
                lambda c=current: [write_progress(t, c, 1000, big) for t in ids]
            )
        hub: Hub = app.state.taskcast.hub
        stalled_subscriber = await eventually(
            lambda: [s for s in hub.connections if s.sending_since],
            bool,
        )
        assert stalled_subscriber  # its sender is stuck in send(): the socket is full
        await asyncio.to_thread(lambda: [write_success(t) for t in ids])
        finals: set[str] = set()
        async with asyncio.timeout(15):
            while len(finals) < len(ids):
                message = await recv_json(fast)
                if message["type"] == "status" and message["final"]:
                    assert message["task_id"] not in finals
                    finals.add(message["task_id"])
    assert finals == set(ids)


async def test_a_client_that_stops_reading_is_closed() -> None:
    app = create_app(settings=settings_with(slow_client_timeout=0.3))
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for task_id in ids:
        write_progress(task_id, 0, 1000)
    big = "x" * 3000
    async with (
        running_server(app, send_buffer=4096) as url,
        ws_connect(
            url, "/ws", max_queue=1, sock=small_window_socket(url), close_timeout=0.2
        ) as stalled,
    ):
        hub: Hub = app.state.taskcast.hub
        for task_id in ids:
            await stalled.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        await eventually(lambda: hub.connections, bool)
        for current in range(1, 200):
            await asyncio.to_thread(
                lambda c=current: [write_progress(t, c, 1000, big) for t in ids]
            )
            if not hub.connections:
                break
        assert not hub.connections
        assert not (hub.watched & set(ids))
        # Reading again, the client finds the connection ended.
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await stalled.recv()


@pytest.mark.parametrize("push", [True, False], ids=["push", "poll-only"])
async def test_push_and_poll_only_modes(
    client: httpx.AsyncClient, redis_client: redis.Redis, push: bool
) -> None:
    # Push mode with a poll too slow to matter; poll-only with a fast poll.
    settings = settings_with(push=push, poll_interval=60 if push else 0.05)
    app = create_app(settings=settings)
    task_id = await submit(client, "progress", total=5, step_seconds=0.05)
    channel = keys.task_meta_key(env.KEY_PREFIX, task_id)
    async with running_server(app) as url, ws_connect(url, f"/ws/tasks/{task_id}") as ws:
        first = await recv_json(ws)
        subscribers = dict(redis_client.pubsub_numsub(channel))[channel.encode()]
        assert subscribers == (1 if push else 0)
        messages, code = await read_until_closed(ws)
    statuses = [first, *messages]
    assert code == 1000
    assert_progress_in_order(statuses)
    assert statuses[-1]["state"] == "SUCCESS"


async def test_a_frame_that_is_not_utf8_closes_1007_and_is_not_a_server_error(
    base_url: str, caplog: pytest.LogCaptureFixture, server_errors: list[logging.LogRecord]
) -> None:
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        async with ws_connect(base_url, "/ws") as ws:
            await ws.send(b"\xff\xfe not utf-8", text=True)
            _, code = await read_until_closed(ws)
        assert code == 1007
        # Said, at INFO and without a traceback: it was an ERROR with one, every time.
        [said] = [r for r in caplog.records if r.getMessage().startswith("Invalid UTF-8")]
        assert (said.levelname, said.exc_info) == ("INFO", None)


async def test_a_client_that_never_reads_is_closed_4408_and_counted() -> None:
    """A client that stops reading while its task is quiet fills no buffer: only the
    keepalive ping tells. It is closed with 4408 within TASKCAST_SLOW_CLIENT_TIMEOUT (it
    was 1011 after uvicorn's own 40 s, and not counted)."""
    settings = settings_with(slow_client_timeout=1.0)
    app = create_app(settings=settings)
    async with running_server(app, **settings.uvicorn_options()) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await writer.drain()
        # It never reads, so it never answers a ping. Only now, afterwards, is its
        # socket read: the handshake, the pings it ignored, and how it was closed.
        async with asyncio.timeout(10):
            received = await reader.read()  # until the server closed the connection
        writer.close()
        head, _, frames = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        opcodes, close = [], None
        while frames:
            opcode, length = frames[0] & 0x0F, frames[1] & 0x7F
            payload, frames = frames[2 : 2 + length], frames[2 + length :]
            opcodes.append(opcode)
            if opcode == 0x8:
                close = int.from_bytes(payload[:2], "big")
        assert opcodes[0] == 0x9 and opcodes[-1] == 0x8  # pinged, then closed
        assert close == 4408
        async with httpx.AsyncClient(base_url=url) as http:
            scraped = (await http.get("/metrics")).text
        assert "taskcast_slow_clients_closed_total 1.0" in scraped


async def test_a_vanished_record_is_not_served_stale_and_ends_as_unknown(
    redis_client: redis.Redis,
) -> None:
    """REST says 404 for a record that is gone (a Redis restart without persistence, a
    deletion); a new WebSocket subscriber got the stale frame and waited for ever. Now
    nobody gets the stale frame, a record that comes back is served, and one that stays
    gone (no heartbeat either) ends as unknown for every subscriber, as REST says."""
    settings = settings_with(stall_after=1.0, poll_interval=0.05)
    task_id, back = str(uuid.uuid4()), str(uuid.uuid4())
    for watched in (task_id, back):
        running_record(redis_client, watched)
    async with running_server(create_app(settings=settings)) as url:
        async with (
            ws_connect(url, f"/ws/tasks/{task_id}") as first,
            ws_connect(url, f"/ws/tasks/{back}") as returning,
        ):
            assert (await recv_json(first))["state"] == "PROGRESS"
            assert (await recv_json(returning))["state"] == "PROGRESS"
            redis_client.delete(
                keys.task_meta_key(env.KEY_PREFIX, task_id),
                keys.task_meta_key(env.KEY_PREFIX, back),
            )
            async with httpx.AsyncClient(base_url=url) as http:
                await eventually(
                    lambda: http.get(f"/tasks/{task_id}"), lambda r: r.status_code == 404
                )
            # Its worker writes again: the subscriber is served the new record.
            meta = {"status": "PROGRESS", "result": {"current": 4, "total": 5}}
            redis_client.set(keys.task_meta_key(env.KEY_PREFIX, back), json.dumps(meta))
            assert (await recv_json(returning))["progress"]["current"] == 4
            async with ws_connect(url, f"/ws/tasks/{task_id}") as late:
                late_messages, late_code = await read_until_closed(late)
            first_messages, first_code = await read_until_closed(first)
    assert [m.get("code") for m in late_messages] == ["unknown_task"]
    assert late_code == 4404
    assert [m.get("code") for m in first_messages] == ["unknown_task"]
    assert first_code == 4404
