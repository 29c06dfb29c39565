"""An owner's history over REST (``GET /feeds/{owner}/tasks``), with the session's real
worker, Redis and uvicorn (and a server of the module's own where auth is on)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

import taskcast
from taskcast.api.guards import watch_refused
from taskcast.history import SCAN_LIMIT
from taskcast_celery import keys
from tests import env
from tests.owning import KEY, QUICK, SECRET, bearer, new_owner, past, serving, start_owned
from tests.support import eventually, final, session_app, wait_for_state, worker_on


async def listing(
    client: httpx.AsyncClient, owner: str, **query: Any
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of ``owner``'s history: its tasks and next cursor."""
    response = await client.get(f"/feeds/{owner}/tasks", params=query)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    page = response.json()
    return page["tasks"], page["next_cursor"]


def ids(tasks: list[dict[str, Any]]) -> list[str]:
    return [task["task_id"] for task in tasks]


def sent_at(client: redis.Redis, task_id: str) -> int:
    """When a task was sent, as its history entry says (Redis's clock, ms)."""
    return int(client.hget(keys.history_key(env.KEY_PREFIX, task_id), "sent_at") or 0)


async def test_listing_is_newest_first_and_filters(
    client: httpx.AsyncClient, redis_client: redis.Redis, worker: object
) -> None:
    me = new_owner()
    done = start_owned(me, tags=("report", "q3"))
    await wait_for_state(client, done, final)
    await past(redis_client, sent_at(redis_client, done))
    failed = start_owned(me, tags=("x",), total=2, fail_at=1)
    await wait_for_state(client, failed, final)
    await past(redis_client, sent_at(redis_client, failed))
    running = start_owned(me, total=600, step_seconds=0.05)
    try:
        await wait_for_state(client, running, lambda status: status["state"] == "PROGRESS")
        everything, cursor = await listing(client, me)
        assert ids(everything) == [running, failed, done] and cursor is None
        newest, failure, success = everything
        # A running task's state is its live record's; the entry said STARTED.
        assert (newest["state"], newest["final"], newest["result"]) == ("PROGRESS", False, None)
        assert newest["started_at"] >= newest["sent_at"] and newest["finished_at"] is None
        assert success["state"] == "SUCCESS" and success["result"] == {"status": "completed"}
        assert success["tags"] == ["report", "q3"] and success["owner"] == me
        assert success["name"] == "taskcast.progress" and success["error"] is None
        assert success["sent_at"] <= success["started_at"] <= success["finished_at"]
        assert failure["state"] == "FAILURE" and failure["result"] is None
        assert failure["error"] == {"type": "RuntimeError", "message": "failed at step 1 of 2"}
        filtered = {
            "state=SUCCESS": {"state": "SUCCESS"},
            "state=FAILURE": {"state": "FAILURE"},
            "state=PROGRESS": {"state": "PROGRESS"},
            "tag=report": {"tag": "report"},
            "tag=x": {"tag": "x"},
            "name=progress": {"name": "progress"},
            "name=taskcast.progress": {"name": "taskcast.progress"},
            "name=sleep": {"name": "sleep"},
            "since=failed": {"since": failure["sent_at"]},
            "since=later": {"since": newest["sent_at"] + 1},
            "tag and state": {"tag": "report", "state": "FAILURE"},
        }
        got = {
            label: ids((await listing(client, me, **query))[0]) for label, query in filtered.items()
        }
        assert got == {
            "state=SUCCESS": [done],
            "state=FAILURE": [failed],
            "state=PROGRESS": [running],
            "tag=report": [done],
            "tag=x": [failed],
            "name=progress": [running, failed, done],
            "name=taskcast.progress": [running, failed, done],
            "name=sleep": [],
            "since=failed": [running, failed],
            "since=later": [],
            "tag and state": [],
        }
        # Page by page: the cursor of each goes on exactly after it.
        first, cursor = await listing(client, me, limit=2)
        assert ids(first) == [running, failed] and cursor is not None
        second, last = await listing(client, me, limit=2, cursor=cursor)
        assert ids(second) == [done] and last is None
    finally:
        await client.delete(f"/tasks/{running}")


@pytest.mark.parametrize(
    "query, fragment",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"since": "-1"}, "since"),
        ({"since": "2026-01-01T00:00:00Z"}, "since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"state": "a b"}, "state"),
        ({"tag": "t" * 65}, "tag"),
        ({"tag": ""}, "tag"),
        ({"colour": "red"}, "colour"),
        ([("limit", "5"), ("limit", "6")], "limit: given more than once"),
    ],
)
async def test_a_bad_query_is_a_422_naming_it(
    client: httpx.AsyncClient, query: Any, fragment: str
) -> None:
    response = await client.get("/feeds/user:1/tasks", params=query)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_query"
    assert fragment in response.json()["detail"]


# (An owner with a "/" is no route at all: 404.)
@pytest.mark.parametrize("owner", ["a%20b", "x" * 129, "user%3F42", "%C3%A9"])
async def test_a_bad_owner_is_a_422(client: httpx.AsyncClient, owner: str) -> None:
    response = await client.get(f"/feeds/{owner}/tasks")
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_owner"


def write_sent(owner: str, task_ids: list[str], tags: tuple[str, ...] = ()) -> None:
    """SENT records of tasks of ``owner`` that no worker runs, as a producer writes them
    (one script each: the backend's own ``record_sent``)."""
    backend = session_app().backend
    with taskcast.owned_by(owner, tags=tags) as ownership:
        for task_id in task_ids:
            backend.record_sent(task_id, "taskcast.progress", ownership)


async def test_paging_over_10000_tasks_lists_each_once_while_new_ones_arrive(
    client: httpx.AsyncClient,
) -> None:
    me = new_owner()
    older = [str(uuid.uuid4()) for _ in range(10_000)]
    began = time.monotonic()
    write_sent(me, older)
    assert time.monotonic() - began < 30, "writing 10,000 entries took too long"
    seen: list[str] = []
    arrived: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 200}
        if cursor is not None:
            query["cursor"] = cursor
        tasks, cursor = await listing(client, me, **query)
        seen += ids(tasks)
        pages += 1
        # New tasks between every two pages: newer than any, they never shift a page.
        fresh = [str(uuid.uuid4()) for _ in range(3)]
        write_sent(me, fresh)
        arrived += fresh
        if cursor is None:
            break
        assert pages <= 60
    assert len(seen) == len(set(seen)) == 10_000
    assert set(seen) == set(older)
    # Newest first throughout (sent times never increase down the list).
    newest_first, _ = await listing(client, me, limit=200)
    assert set(ids(newest_first)[: len(arrived)]) == set(arrived)


async def test_a_rare_filter_scans_a_bounded_number_and_hands_a_cursor_on(
    client: httpx.AsyncClient,
) -> None:
    me = new_owner()
    # Oldest first, as they were sent: one tagged task, then 2.5 scans' worth of others.
    rare = str(uuid.uuid4())
    write_sent(me, [rare], tags=("rare",))
    write_sent(me, [str(uuid.uuid4()) for _ in range(SCAN_LIMIT * 5 // 2)])
    found: list[str] = []
    cursor: str | None = None
    requests = 0
    while True:
        tasks, cursor = await listing(
            client, me, tag="rare", **({"cursor": cursor} if cursor else {})
        )
        requests += 1
        found += ids(tasks)
        if cursor is None:
            break
    # Each request looked at no more than SCAN_LIMIT entries: three to reach the oldest.
    assert found == [rare] and requests == 3


async def test_history_outlives_the_record(
    client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    me = new_owner()
    queue = f"test-history-{uuid.uuid4().hex[:8]}"
    # A worker whose records expire two seconds after they are written.
    with worker_on(queue, TASKCAST_RESULT_EXPIRES="2"):
        with taskcast.owned_by(me, tags=("short",)):
            task_id = str(
                session_app().send_task("taskcast.progress", kwargs=QUICK, queue=queue).id
            )
        record = keys.task_meta_key(env.KEY_PREFIX, task_id)

        async def listed_state() -> str:
            return str((await listing(client, me))[0][0]["state"])

        await eventually(listed_state, lambda state: state == "SUCCESS", within=60)
    await eventually(lambda: redis_client.exists(record), lambda exists: not exists, within=10)
    assert (await client.get(f"/tasks/{task_id}")).status_code == 404
    (task,), cursor = await listing(client, me)
    assert cursor is None
    assert (task["task_id"], task["state"], task["final"]) == (task_id, "SUCCESS", True)
    assert task["result"] == {"status": "completed"} and task["tags"] == ["short"]
    assert task["finished_at"] >= task["started_at"] >= task["sent_at"]


def test_a_large_result_is_cut_to_its_size() -> None:
    from taskcast_celery.backend import HISTORY_RESULT_BYTES, _history_result

    big = {"rows": "x" * HISTORY_RESULT_BYTES}
    assert _history_result("SUCCESS", big) == (
        f'{{"truncated": true, "bytes": {HISTORY_RESULT_BYTES + 11}}}'
    )
    assert _history_result("SUCCESS", {"ok": 1}) == '{"ok":1}'


@pytest.fixture(scope="module")
async def secured() -> AsyncIterator[str]:
    """A server of the session's app with API keys and a secret."""
    async with serving(api_keys=(KEY,), secret=SECRET) as url:
        yield url


async def test_two_owners_never_see_each_others_tasks(
    client: httpx.AsyncClient, secured: str, worker: object
) -> None:
    # One owner's name is the start of the other's: still two owners.
    short = new_owner()
    long = short + "2"
    mine, theirs = start_owned(short), start_owned(long)
    for task_id in (mine, theirs):
        await wait_for_state(client, task_id, final)
    # Auth off (the session's server): anyone lists, each owner its own tasks only.
    assert ids((await listing(client, short))[0]) == [mine]
    assert ids((await listing(client, long))[0]) == [theirs]
    token = taskcast.sign_feed_token(short, secret=SECRET)
    long_token = taskcast.sign_feed_token(long, secret=SECRET)
    async with httpx.AsyncClient(base_url=secured) as http:
        path = f"/feeds/{long}/tasks"
        refusals = {
            "nothing": await http.get(path),
            "the shorter owner's token": await http.get(path, params={"token": token}),
            "... as Bearer": await http.get(path, headers=bearer(token)),
            "a task's watch token": await http.get(
                path, params={"token": taskcast.sign_watch_token(theirs, secret=SECRET)}
            ),
            "a tampered token": await http.get(
                path, params={"token": taskcast.sign_feed_token(long, secret=SECRET, ttl=1)[:-1]}
            ),
        }
        for why, refused in refusals.items():
            assert refused.status_code == 401, why
            assert refused.json() == {"error": "unauthorized", "detail": watch_refused("feed")}
        for opened in (
            await http.get(path, params={"token": long_token}),
            await http.get(path, headers=bearer(long_token)),
            await http.get(path, headers=bearer(KEY)),
        ):
            assert opened.status_code == 200, opened.text
            assert ids(opened.json()["tasks"]) == [theirs]
        mine_only = await http.get(f"/feeds/{short}/tasks", params={"token": token})
        assert ids(mine_only.json()["tasks"]) == [mine]
