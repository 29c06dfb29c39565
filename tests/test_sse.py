"""Server-Sent Events: a real uvicorn, real HTTP streams read as EventSource reads them,
a real worker and Redis. (tests/test_browser_sse.py follows a task with Chromium's own
EventSource.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest

from taskcast.api import sse
from taskcast.app import create_app
from taskcast.auth import Auth
from taskcast.live.hub import Hub
from tests.support import (
    Reader,
    WorkerProcess,
    eventually,
    read_events,
    running_server,
    settings_with,
    small_window_socket,
    submit,
    write_progress,
    write_success,
)

SECRET = "s" * 40
KEY = "key-" + "k" * 30


async def test_a_task_streams_to_its_final_then_the_stream_ends(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    task_id = await submit(client, "progress", total=4, step_seconds=0.1)
    async with client.stream("GET", f"/sse/tasks/{task_id}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        reader = Reader(response)
        first = await anext(reader.blocks)
        assert (first.retry, first.comments) == (2000, ["taskcast"])
        seen = await reader.events()
        # The server ends the response after the end event.
        assert [block async for block in reader.blocks] == []
    statuses = [event.message for event in seen if event.event == "status"]
    assert statuses[-1]["state"] == "SUCCESS" and statuses[-1]["final"]
    assert [s["final"] for s in statuses].count(True) == 1
    currents = [s["progress"]["current"] for s in statuses if s["state"] == "PROGRESS"]
    assert currents == sorted(set(currents))
    assert seen[-1].event == "end" and seen[-1].id == "end"
    assert seen[-1].message == {"type": "end"}
    assert all(event.id for event in seen)


async def test_a_resumed_stream_sends_only_what_changed_and_after_the_end_204(
    client: httpx.AsyncClient,
) -> None:
    task_id = str(uuid.uuid4())
    write_progress(task_id, 1, 10)
    url = f"/sse/tasks/{task_id}"
    async with client.stream("GET", url) as response:
        (first,) = await read_events(response, count=1)
    assert first.message["progress"]["current"] == 1
    # Back with what it saw: nothing is sent again until the task changes.
    async with client.stream("GET", url, headers={"Last-Event-ID": str(first.id)}) as response:
        write_progress(task_id, 2, 10)
        (second,) = await read_events(response, count=1)
    assert second.message["progress"]["current"] == 2
    # A drop that missed the final: the final is sent on the return, then the end.
    write_success(task_id)
    async with client.stream("GET", f"{url}?last_event_id={second.id}") as response:
        ending = await read_events(response)
    assert [event.event for event in ending] == ["status", "end"]
    assert ending[0].message["state"] == "SUCCESS"
    # Seen to the end: a browser that reconnects anyway is told to stop.
    stop = await client.get(url, headers={"Last-Event-ID": "end"})
    assert stop.status_code == 204
    # The final it already has is not sent twice, even to a stream that missed the end.
    async with client.stream("GET", url, headers={"Last-Event-ID": str(ending[0].id)}) as response:
        assert [event.event for event in await read_events(response)] == ["end"]


async def test_many_tasks_and_a_group_on_one_stream(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    tasks = [await submit(client, "progress", total=3, step_seconds=0.05) for _ in range(3)]
    reply = await client.post(
        "/groups/progress", json={"count": 2, "params": {"total": 2, "step_seconds": 0.05}}
    )
    group_id = reply.json()["group_id"]
    unknown = str(uuid.uuid4())
    query = "&".join([*(f"task={task_id}" for task_id in tasks), f"task={unknown}"])
    async with client.stream("GET", f"/sse?{query}&group={group_id}") as response:
        seen = await read_events(response)
    finals = [e.message["task_id"] for e in seen if e.event == "status" and e.message["final"]]
    assert sorted(finals) == sorted(tasks)
    groups = [e.message for e in seen if e.event == "group"]
    assert groups[-1]["final"] and [g["final"] for g in groups].count(True) == 1
    errors = [e.message for e in seen if e.event == "error"]
    assert errors == [
        {"type": "error", "code": "unknown_task", "detail": f"no task with id {unknown}",
         "task_id": unknown},
    ]  # fmt: skip
    assert seen[-1].event == "end"
    # An event's id covers every id on the stream the client has seen a state of.
    assert len(str(seen[-2].id).split(".")) == 5


async def test_an_unknown_group_is_said_and_ends_the_stream(client: httpx.AsyncClient) -> None:
    group_id = str(uuid.uuid4())
    async with client.stream("GET", f"/sse/groups/{group_id}") as response:
        seen = await read_events(response)
    assert [(e.event, e.message.get("code")) for e in seen] == [
        ("error", "unknown_group"),
        ("end", None),
    ]


@pytest.mark.parametrize(
    ("query", "status", "error", "detail"),
    [
        ("", 400, "invalid_query", "name at least one ?task= or ?group= to follow"),
        ("?task=nope", 422, "invalid_task_id", "task id must be a UUID, got 'nope'"),
        ("?group=nope", 422, "invalid_group_id", "group id must be a UUID, got 'nope'"),
        ("?token=abc&task={a}", 400, "invalid_query", "each token follows the task or group"),
        ("?task={a}&token=x&token=y", 400, "invalid_query", "each token follows"),
        ("?task={a}&tasks={b}", 400, "invalid_query", "unexpected query parameter 'tasks'"),
        ("?task={a}&task={a}", 400, "invalid_query", "each task and group may be named once"),
    ],
)
async def test_a_bad_query_is_refused_before_any_stream(
    client: httpx.AsyncClient, query: str, status: int, error: str, detail: str
) -> None:
    response = await client.get("/sse" + query.format(a=uuid.uuid4(), b=uuid.uuid4()))
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert detail in response.json()["detail"]


async def test_more_ids_than_a_stream_may_follow_are_refused() -> None:
    app = create_app(settings=settings_with(max_subscriptions=2))
    query = "&".join(f"task={uuid.uuid4()}" for _ in range(3))
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get(f"/sse?{query}")
        invalid = await http.get("/sse/tasks/not-a-uuid")
        extra = await http.get(f"/sse/tasks/{uuid.uuid4()}?task={uuid.uuid4()}")
    assert (response.status_code, response.json()["detail"]) == (
        400,
        "a stream may follow at most 2 tasks and groups",
    )
    assert (invalid.status_code, invalid.json()["error"]) == (422, "invalid_task_id")
    assert (extra.status_code, extra.json()["detail"]) == (400, "unexpected query parameter 'task'")


async def test_with_tokens_on_each_id_needs_its_token_or_a_key() -> None:
    app = create_app(settings=settings_with(secret=SECRET, api_keys=(KEY,)))
    auth = Auth(settings_with(secret=SECRET), 86_400)
    done, other = str(uuid.uuid4()), str(uuid.uuid4())
    write_success(done)
    write_success(other)
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        refused = await http.get(f"/sse/tasks/{done}")
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
        # On /sse an id its token does not open is refused alone, as on /ws.
        async with http.stream(
            "GET", f"/sse?task={done}&token={auth.token(done)}&task={other}&token=forged"
        ) as response:
            assert response.status_code == 200
            partly = await read_events(response)
        assert sorted(
            (e.event, e.message.get("code"), e.message.get("task_id")) for e in partly[:2]
        ) == [("error", "unauthorized", other), ("status", None, done)]
        assert partly[-1].event == "end"
        # With no id it may open, there is no stream.
        wrong = await http.get(f"/sse?task={other}&token=forged")
        assert wrong.status_code == 401 and other in wrong.json()["detail"]
        for path, headers in (
            (f"/sse/tasks/{done}?token={auth.token(done)}", {}),
            (f"/sse?task={done}&token={auth.token(done)}&task={other}&token={auth.token(other)}",
             {}),
            (f"/sse/tasks/{done}", {"Authorization": f"Bearer {KEY}"}),
        ):  # fmt: skip
            async with http.stream("GET", path, headers=headers) as response:
                assert response.status_code == 200, path
                assert (await read_events(response))[-1].event == "end"


async def test_an_idle_stream_gets_a_comment_every_ping_interval(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "PING_SECONDS", 0.2)
    task_id = str(uuid.uuid4())
    write_progress(task_id, 1, 10)
    async with client.stream("GET", f"/sse/tasks/{task_id}") as response:
        pings = 0
        async with asyncio.timeout(10):
            async for event in Reader(response).blocks:
                pings += event.comments == ["ping"]
                if pings == 2:
                    break
    assert pings == 2


async def test_a_stream_dropped_by_the_server_ends_without_end(
    client: httpx.AsyncClient, hub: Hub
) -> None:
    task_id = str(uuid.uuid4())
    write_progress(task_id, 1, 10)
    async with client.stream("GET", f"/sse/tasks/{task_id}") as response:
        reader = Reader(response)
        (first,) = await reader.events(count=1)
        # What the hub's slow-client reaper does to a connection: its sender is cancelled.
        for subscriber, sender in list(hub.connections.items()):
            if task_id in subscriber.watching:
                sender.cancel()
        rest = await reader.events()
    assert first.event == "status" and rest == []
    assert task_id not in hub.watched


async def test_a_stopping_server_ends_its_streams_without_end_and_head_has_no_body() -> None:
    task_id = str(uuid.uuid4())
    write_progress(task_id, 1, 10)
    serving = running_server(create_app(settings=settings_with()))
    url = await serving.__aenter__()
    stopped = False
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            head = await http.head(f"/sse/tasks/{task_id}")
            assert head.status_code == 200, head.text
            assert head.headers["content-type"].startswith("text/event-stream")
            assert head.content == b""
            async with http.stream("GET", f"/sse/tasks/{task_id}") as response:
                reader = Reader(response)
                (first,) = await reader.events(count=1)
                # As SIGTERM does: uvicorn waits for open responses before it stops, so
                # a stream that did not end would hold the server up for ever.
                stopping = asyncio.create_task(serving.__aexit__(None, None, None))
                stopped = True
                rest = await reader.events()
                async with asyncio.timeout(10):
                    await stopping
    finally:
        if not stopped:
            await serving.__aexit__(None, None, None)
    # No end event: the task has not ended, and the browser should come back (elsewhere).
    assert first.event == "status" and rest == []


def open_stalled_stream(url: str, query: str) -> socket.socket:
    """A client that asks for ``/sse?query`` and never reads a byte of the answer."""
    stalled = small_window_socket(url)
    stalled.setblocking(True)
    stalled.sendall(f"GET /sse?{query} HTTP/1.1\r\nHost: {url[7:]}\r\n\r\n".encode())
    stalled.setblocking(False)
    return stalled


async def flood(ids: list[str], until: Callable[[], bool]) -> None:
    """Large progress events for ``ids`` (bounded) until ``until`` holds."""
    big = "x" * 3000  # large events fill a stalled client's buffers quickly
    for current in range(1, 200):
        await asyncio.to_thread(lambda c=current: [write_progress(t, c, 1000, big) for t in ids])
        if until():
            return
    raise AssertionError("still not so after 200 rounds of progress")


@dataclass
class Stalled:
    """A served app with running tasks, and a client that asked for them all on /sse
    and never reads."""

    hub: Hub
    http: httpx.AsyncClient
    ids: list[str]
    query: str


@contextlib.asynccontextmanager
async def stalled_stream(slow_client_timeout: float) -> AsyncIterator[Stalled]:
    app = create_app(settings=settings_with(slow_client_timeout=slow_client_timeout))
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for task_id in ids:
        write_progress(task_id, 0, 1000)
    query = "&".join(f"task={task_id}" for task_id in ids)
    async with (
        running_server(app, send_buffer=4096) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        stalled = open_stalled_stream(url, query)
        try:
            yield Stalled(app.state.taskcast.hub, http, ids, query)
        finally:
            # (Before the server stops: it waits for every response to end.)
            stalled.close()


async def test_a_stream_that_stops_reading_delays_no_one() -> None:
    async with stalled_stream(slow_client_timeout=60) as stalled:
        hub, ids = stalled.hub, stalled.ids
        async with stalled.http.stream("GET", f"/sse?{stalled.query}") as fast:
            reader = Reader(fast)
            await eventually(lambda: len(hub.connections) == 2, bool)
            # The stalled client never reads: its subscriber backs up, and waits alone.
            await flood(ids, lambda: bool(hub.backed_up))
            await asyncio.to_thread(lambda: [write_success(t) for t in ids])
            seen = await reader.events()
        # The fast stream has ended; the stalled one still waits on its client.
        assert list(hub.connections) == list(hub.backed_up)
    finals = [e.message["task_id"] for e in seen if e.event == "status" and e.message["final"]]
    assert sorted(finals) == sorted(ids)
    assert seen[-1].event == "end"


async def test_a_stream_that_stops_reading_is_ended_and_counted(
    server_errors: list[logging.LogRecord],
) -> None:
    """Ended, its descriptor released, and counted: a client's doing, logged as no error
    of the app's (uvicorn logged "returned without completing response")."""
    async with stalled_stream(slow_client_timeout=0.3) as stalled:
        hub = stalled.hub
        await eventually(lambda: len(hub.connections) == 1, bool)
        await flood(stalled.ids, lambda: not hub.connections)
        assert not (hub.watched & set(stalled.ids))
        scraped = (await stalled.http.get("/metrics")).text
    # Ended by the write that waited on its client for the slow-client timeout, and counted.
    assert "taskcast_slow_clients_closed_total 1.0" in scraped


async def test_a_stream_holds_one_of_the_process_s_connections() -> None:
    app = create_app(settings=settings_with(max_connections=1))
    task_id = str(uuid.uuid4())
    write_progress(task_id, 1, 10)
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        async with http.stream("GET", f"/sse/tasks/{task_id}") as first:
            assert first.status_code == 200
            refused = await http.get(f"/sse/tasks/{task_id}")
            assert refused.status_code == 503
            assert refused.json()["error"] == "too_many_connections"
            assert refused.headers["retry-after"] == "5"
        # Released once the server sees the stream's end (a HEAD holds it for no longer
        # than its answer).
        head = await eventually(
            lambda: http.head(f"/sse/tasks/{task_id}"), lambda r: r.status_code == 200
        )
        assert head.headers["content-type"].startswith("text/event-stream")


async def test_a_stream_reopened_with_one_more_id_is_not_sent_the_others_again(
    client: httpx.AsyncClient,
) -> None:
    running, added = str(uuid.uuid4()), str(uuid.uuid4())
    write_progress(running, 1, 10)
    write_progress(added, 5, 10)
    async with client.stream("GET", f"/sse?task={running}") as response:
        (first,) = await read_events(response, count=1)
    query = f"task={running}&task={added}&last_event_id={first.id}"
    async with client.stream("GET", f"/sse?{query}") as response:
        reader = Reader(response)
        (second,) = await reader.events(count=1)
        write_progress(running, 2, 10)
        (third,) = await reader.events(count=1)
    assert (second.message["task_id"], second.message["progress"]["current"]) == (added, 5)
    assert (third.message["task_id"], third.message["progress"]["current"]) == (running, 2)
