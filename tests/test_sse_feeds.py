"""An owner's feed as Server-Sent Events (``GET /sse/feeds/{owner}``): a real uvicorn,
the session's worker and Redis, streams read as EventSource reads them."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import httpx
import pytest

import taskcast
from taskcast.app import create_app
from taskcast.live.hub import Hub
from taskcast_celery import keys
from tests import env
from tests.owning import KEY, SECRET, new_owner, start_owned
from tests.support import (
    Event,
    Reader,
    WorkerProcess,
    eventually,
    running_server,
    session_app,
    settings_with,
)


async def until(reader: Reader, done: Callable[[Event], bool], within: float = 20) -> list[Event]:
    """The events of a stream (comments skipped) up to the first one ``done`` holds for."""
    seen: list[Event] = []
    async with asyncio.timeout(within):
        async for event in reader.blocks:
            if not event.data:
                continue
            seen.append(event)
            if done(event):
                return seen
    raise AssertionError(f"the stream ended first: {[e.event for e in seen]}")


def final_of(task_id: str) -> Callable[[Event], bool]:
    return lambda e: e.event == "status" and e.message["task_id"] == task_id and e.message["final"]


def ended(task_id: str) -> bool:
    """Whether the task's record says it succeeded (read from Redis, not from a stream)."""
    raw = session_app().backend.client.get(keys.task_meta_key(env.KEY_PREFIX, task_id))
    return raw is not None and json.loads(raw)["status"] == "SUCCESS"


async def test_a_feed_stream_starts_with_the_unfinished_tasks_then_every_status(
    client: httpx.AsyncClient, worker: WorkerProcess, hub: Hub
) -> None:
    me = new_owner()
    running = start_owned(me, total=40, step_seconds=0.05)
    async with client.stream("GET", f"/sse/feeds/{me}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = Reader(response)
        first = await anext(reader.blocks)
        assert (first.retry, first.comments) == (2000, ["taskcast"])
        [snapshot] = await until(reader, lambda e: True)
        newer = start_owned(me)
        seen = await until(reader, final_of(newer))
        assert me in hub.watched_feeds
    assert snapshot.event == "feed" and snapshot.id == str(snapshot.message["at"])
    assert (snapshot.message["type"], snapshot.message["feed"]) == ("feed", me)
    assert [task["task_id"] for task in snapshot.message["tasks"]] == [running]
    assert snapshot.message["tasks"][0]["type"] == "status"
    # Every status of the owner's, new task included, each with a time to resume from
    # that never goes back.
    assert {e.event for e in seen} == {"status"}
    assert all(e.message["owner"] == me for e in seen)
    assert {e.message["task_id"] for e in seen} <= {running, newer}
    newer_states = [e.message["state"] for e in seen if e.message["task_id"] == newer]
    assert newer_states[-1] == "SUCCESS" and newer_states.count("SUCCESS") == 1
    ids = [int(str(e.id)) for e in [snapshot, *seen]]
    assert ids == sorted(ids)
    # The client left: the hub no longer follows the feed.
    await eventually(lambda: hub.watched_feeds, lambda feeds: me not in feeds)


async def test_a_stream_back_with_its_last_event_id_gets_the_finals_it_missed(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    me = new_owner()
    url = f"/sse/feeds/{me}"
    # Unfinished while the stream is open; it ends while the client is away.
    running = start_owned(me, total=20, step_seconds=0.1)
    async with client.stream("GET", url) as response:
        reader = Reader(response)
        seen = await until(
            reader, lambda e: e.event == "status" and e.message["state"] == "PROGRESS"
        )
    last_id = str(seen[-1].id)
    # And one that starts and ends while away.
    missed = start_owned(me)
    await eventually(lambda: ended(running) and ended(missed), bool, within=20)
    async with client.stream("GET", url, headers={"Last-Event-ID": last_id}) as response:
        [resumed] = await until(Reader(response), lambda e: True)
    assert resumed.event == "feed" and int(str(resumed.id)) >= int(last_id)
    states = {task["task_id"]: task["state"] for task in resumed.message["tasks"]}
    assert states == {running: "SUCCESS", missed: "SUCCESS"}
    # A first connection (no id) is told only what is unfinished: nothing here.
    async with client.stream("GET", url) as response:
        [fresh] = await until(Reader(response), lambda e: True)
    assert fresh.message["tasks"] == []
    # ?last_event_id= does what the header does (for a new EventSource).
    async with client.stream("GET", f"{url}?last_event_id={last_id}") as response:
        [again] = await until(Reader(response), lambda e: True)
    assert {task["task_id"] for task in again.message["tasks"]} == {running, missed}


async def test_two_owners_never_see_each_others_tasks(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    short = new_owner()
    # One owner's name is the start of the other's: still two owners.
    long = short + "2"
    async with (
        client.stream("GET", f"/sse/feeds/{short}") as short_response,
        client.stream("GET", f"/sse/feeds/{long}") as long_response,
    ):
        short_reader, long_reader = Reader(short_response), Reader(long_response)
        await until(short_reader, lambda e: e.event == "feed")
        await until(long_reader, lambda e: e.event == "feed")
        theirs = start_owned(long)
        mine = start_owned(short)
        seen_short = await until(short_reader, final_of(mine))
        seen_long = await until(long_reader, final_of(theirs))
    assert {e.message["owner"] for e in seen_short} == {short}
    assert {e.message["owner"] for e in seen_long} == {long}
    assert {e.message["task_id"] for e in seen_short} == {mine}
    assert {e.message["task_id"] for e in seen_long} == {theirs}


async def test_with_tokens_on_a_feed_needs_its_own_feed_token_or_a_key() -> None:
    app = create_app(settings=settings_with(secret=SECRET, api_keys=(KEY,)))
    url = "/sse/feeds/user:42"
    mine = taskcast.sign_feed_token("user:42", secret=SECRET)
    # An owner is not a prefix of another: user:4's token opens nothing of user:42's.
    theirs = taskcast.sign_feed_token("user:4", secret=SECRET)
    # A task's watch token is no feed token either.
    watch = taskcast.sign_watch_token(str(uuid.uuid4()), secret=SECRET)
    async with running_server(app) as base, httpx.AsyncClient(base_url=base) as http:
        for refused in (url, f"{url}?token={theirs}", f"{url}?token={watch}", f"{url}?token=x"):
            response = await http.get(refused)
            assert response.status_code == 401, refused
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
        for path, headers in (
            (f"{url}?token={mine}", {}),
            (url, {"Authorization": f"Bearer {mine}"}),
            (url, {"Authorization": f"Bearer {KEY}"}),
        ):
            async with http.stream("GET", path, headers=headers) as response:
                assert response.status_code == 200, path
                [answer] = await until(Reader(response), lambda e: True)
                assert (answer.event, answer.message["feed"]) == ("feed", "user:42")


@pytest.mark.parametrize(
    ("path", "headers", "status", "error", "detail"),
    [
        ("/sse/feeds/user%20x", {}, 422, "invalid_owner", "an owner is 1 to 128 characters"),
        ("/sse/feeds/" + "x" * 129, {}, 422, "invalid_owner", "got 'xxxx"),
        ("/sse/feeds/a!b", {}, 422, "invalid_owner", "got 'a!b'"),
        ("/sse/feeds/u?task=1", {}, 400, "invalid_query", "unexpected query parameter 'task'"),
        ("/sse/feeds/u", {"Last-Event-ID": "end"}, 400, "invalid_last_event_id", "got 'end'"),
        ("/sse/feeds/u?last_event_id=-5", {}, 400, "invalid_last_event_id", "a time in ms"),
    ],
)
async def test_a_bad_owner_or_resume_is_refused_before_any_stream(
    client: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    status: int,
    error: str,
    detail: str,
) -> None:
    response = await client.get(path, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error
    assert detail in response.json()["detail"]


async def test_the_feed_stream_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/sse/feeds/{owner}"]["get"]
    assert [p["name"] for p in operation["parameters"]] == ["owner", "last_event_id"]
    assert set(operation["responses"]) == {"200", "400", "422", "503"}
