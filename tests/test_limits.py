"""Per-client limits: connections per address and subscribes per second, on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import uuid

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from taskcast.app import create_app
from taskcast.limits import ClientConnections, TokenBucket, default_max_connections
from taskcast.settings import Settings
from taskcast.state import AppState
from tests.support import (
    eventually,
    read_until_closed,
    recv_json,
    running_server,
    settings_with,
    ws_connect,
)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    # Refused attempts spend nothing: half a second later there is exactly one token.
    assert bucket.take(100.5) and not bucket.take(100.5)
    # Idle time refills up to the burst, never beyond it.
    assert [bucket.take(200.0) for _ in range(4)] == [True, True, True, False]
    assert all(TokenBucket(rate=0, burst=0, now=0).take(0) for _ in range(1000))


def test_client_connections_count_per_address_and_in_all() -> None:
    clients = ClientConnections(per_client=2, total=4)
    assert clients.acquire("10.0.0.1") is None and clients.acquire("10.0.0.1") is None
    assert clients.acquire("10.0.0.1") == (
        "connections_per_client",
        "this address already has 2 connections open; retry later",
    )
    assert clients.acquire("10.0.0.2") is None and clients.acquire("10.0.0.3") is None
    refused = clients.acquire("10.0.0.4")
    assert refused is not None and refused.limit == "connections_total"
    clients.release("10.0.0.1")
    assert clients.acquire("10.0.0.4") is None
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        clients.release(client)
    assert (clients.open, clients.count) == ({}, 0)
    unlimited = ClientConnections(per_client=0, total=0)
    assert all(unlimited.acquire("10.0.0.1") is None for _ in range(1000))


def test_by_default_a_process_is_capped_by_its_open_files_and_an_address_is_not() -> None:
    assert Settings.model_fields["max_connections_per_client"].default == 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() == max(soft - 256, 256)


async def _pong(ws: ClientConnection) -> None:
    await ws.send('{"op": "ping"}')
    assert await recv_json(ws) == {"type": "pong"}


async def _scrape(url: str) -> str:
    async with httpx.AsyncClient(base_url=url) as http:
        return (await http.get("/metrics")).text


async def test_connections_per_client_are_capped_and_every_close_frees_a_slot() -> None:
    app = create_app(settings=settings_with(max_connections_per_client=3))
    async with running_server(app) as url:
        state: AppState = app.state.taskcast

        def open_here() -> dict[str, int]:
            return dict(state.clients.open)

        async with ws_connect(url, "/ws") as first, ws_connect(url, "/ws") as second:
            await _pong(first)
            await _pong(second)
            # A socket for one task counts like any other.
            async with ws_connect(url, f"/ws/tasks/{uuid.uuid4()}") as third:
                async with ws_connect(url, "/ws") as refused:
                    messages, code = await read_until_closed(refused)
                assert code == 1013
                assert [m["code"] for m in messages] == ["too_many_connections"]
                assert "3 connections" in messages[0]["detail"]
                # The unknown task closes its socket (4404): the server side ended it.
                _, code = await read_until_closed(third)
                assert code == 4404
            await eventually(open_here, lambda open_: open_ == {"127.0.0.1": 2})
            # The freed slot takes a new connection, which a 1009 close frees again.
            async with ws_connect(url, "/ws") as again:
                await _pong(again)
                await again.send('{"op": "ping", "pad": "' + "x" * 5000 + '"}')
                _, code = await read_until_closed(again)
                assert code == 1009
            await eventually(open_here, lambda open_: open_ == {"127.0.0.1": 2})
            await _pong(first)
        await eventually(open_here, lambda open_: open_ == {})
        scraped = await _scrape(url)
    assert 'taskcast_limited_total{limit="connections_per_client"} 1.0' in scraped


async def test_subscribes_over_the_rate_are_refused_and_the_socket_stays_usable() -> None:
    # A burst of 3 and a refill far too slow to matter within the test.
    settings = settings_with(subscribe_rate=0.001, subscribe_burst=3)
    app = create_app(settings=settings)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    async with running_server(app) as url, ws_connect(url, "/ws") as ws:
        for task_id in ids:
            await ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        # Refusals are answered at once, the others after the hub's read: any order.
        replies = {(m := await recv_json(ws))["task_id"]: m["code"] for _ in ids}
        assert replies == {
            **dict.fromkeys(ids[:3], "unknown_task"),
            **dict.fromkeys(ids[3:], "rate_limited"),
        }
        # Every other op still works, and the refusal is an ordinary error message.
        await _pong(ws)
        await ws.send(json.dumps({"op": "unsubscribe", "task_id": ids[0]}))
        assert await recv_json(ws) == {"type": "unsubscribed", "task_id": ids[0]}
        await ws.send(json.dumps({"op": "subscribe", "task_id": ids[4]}))
        error = await recv_json(ws)
        assert (error["type"], error["code"], error["task_id"]) == ("error", "rate_limited", ids[4])
        assert "subscribes a second" in error["detail"]
        scraped = await _scrape(url)
    assert 'taskcast_limited_total{limit="subscribe_rate"} 3.0' in scraped


async def test_the_rate_refills() -> None:
    settings = settings_with(subscribe_rate=1, subscribe_burst=1)
    app = create_app(settings=settings)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    async with running_server(app) as url, ws_connect(url, "/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "task_id": first}))
        await ws.send(json.dumps({"op": "subscribe", "task_id": second}))
        replies = {(m := await recv_json(ws))["task_id"]: m["code"] for _ in range(2)}
        assert replies == {first: "unknown_task", second: "rate_limited"}

        async def subscribe() -> str:
            await ws.send(json.dumps({"op": "subscribe", "task_id": second}))
            code: str = (await recv_json(ws))["code"]
            return code

        # Refused attempts spend nothing: about a second after the first, one passes.
        assert await eventually(subscribe, lambda code: code != "rate_limited") == "unknown_task"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/tasks/progress", {"total": 3601, "step_seconds": 1}),
        ("POST", "/tasks/progress", {"total": 100_000, "step_seconds": 60}),
        ("POST", "/tasks/sleep", {"seconds": 3601}),
        ("POST", "/process-data-with-status/?time=3601", None),
    ],
)
async def test_no_task_may_be_asked_to_run_over_an_hour(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, float] | None
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert "3600" in response.json()["detail"]


async def test_a_crowd_behind_one_address_is_not_refused_by_default() -> None:
    """300 clients following one task from one address (a classroom behind NAT): with
    the defaults, all get their status (100 a client address refused 200 of them)."""
    defaults = {
        "max_connections_per_client": Settings.model_fields["max_connections_per_client"].default
    }
    app = create_app(settings=settings_with(**defaults))
    async with running_server(app) as url, contextlib.AsyncExitStack() as stack:
        task_id = str(uuid.uuid4())
        sockets = [
            await stack.enter_async_context(ws_connect(url, f"/ws/tasks/{task_id}"))
            for _ in range(300)
        ]
        answers = await asyncio.gather(*(read_until_closed(ws) for ws in sockets))
    # The task is unknown: every client was served, and told so (none refused with 1013).
    assert {code for _, code in answers} == {4404}
    assert all(messages[0]["code"] == "unknown_task" for messages, _ in answers)


async def test_the_process_cap_refuses_the_connection_over_it() -> None:
    app = create_app(settings=settings_with(max_connections=2))
    async with running_server(app) as url:
        async with ws_connect(url, "/ws") as first, ws_connect(url, "/ws") as second:
            await _pong(first)
            await _pong(second)
            async with ws_connect(url, "/ws") as refused:
                messages, code = await read_until_closed(refused)
            assert code == 1013
            assert messages[0]["detail"] == (
                "this server already has 2 connections open; retry later"
            )
        scraped = await _scrape(url)
    assert 'taskcast_limited_total{limit="connections_total"} 1.0' in scraped
