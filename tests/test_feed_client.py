"""An owner's tasks from the Python client (``submit(owner=)``, ``get_history``,
``watch_feed``) and from ``taskcast feed``: real processes against the live test server
(and one of the module's own with a secret)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import taskcast
from taskcast.cli.terminal import Exit, feed_line, history_line
from taskcast.client import Forbidden, InvalidOwner, InvalidParams, Unauthorized
from tests.owning import KEY, QUICK, SECRET, bearer, new_owner, serving, start_owned
from tests.support import cli, final, run_cli, wait_for_state


@pytest.fixture(scope="module")
async def secured() -> AsyncIterator[str]:
    """A server of the session's app with API keys and a secret."""
    async with serving(api_keys=(KEY,), secret=SECRET) as url:
        yield url


async def until_final(statuses: AsyncIterator[dict[str, Any]], task_id: str) -> list[str]:
    """The states a feed yields for ``task_id`` up to its final (others' are skipped)."""
    states: list[str] = []
    async with asyncio.timeout(30):
        async for status in statuses:
            if status["task_id"] == task_id:
                states.append(status["state"])
                if status["final"]:
                    return states
    raise AssertionError(f"the feed ended before {task_id}'s final: {states}")


async def test_the_client_submits_lists_and_follows_an_owners_tasks(
    base_url: str, client: httpx.AsyncClient
) -> None:
    me = new_owner()
    service = taskcast.Client(base_url)
    running = await service.submit("progress", {"total": 100, "step_seconds": 0.05}, owner=me)
    assert running["owner"] == me and running["tags"] == []
    try:
        await wait_for_state(client, running["task_id"], lambda s: s["state"] == "PROGRESS")
        feed = service.watch_feed(me)
        async with contextlib.aclosing(feed):
            # First the feed's answer: the task that runs.
            first = await anext(feed)
            assert (first["task_id"], first["owner"]) == (running["task_id"], me)
            # Then every status of a task started after the subscribe.
            later = await service.submit("progress", QUICK, owner=me, tags=["t"])
            states = await until_final(feed, later["task_id"])
        assert states[-1] == "SUCCESS" and states.count("SUCCESS") == 1
        page = await service.get_history(me, limit=1)
        assert [task["task_id"] for task in page["tasks"]] == [later["task_id"]]
        rest = await service.get_history(me, cursor=page["next_cursor"])
        assert [task["task_id"] for task in rest["tasks"]] == [running["task_id"]]
        assert rest["next_cursor"] is None
        tagged = await service.get_history(me, tag="t", state="SUCCESS")
        assert [task["task_id"] for task in tagged["tasks"]] == [later["task_id"]]
    finally:
        await service.cancel(running["task_id"])
    with pytest.raises(InvalidOwner):
        await service.get_history("a b")
    with pytest.raises(InvalidParams, match="limit"):
        await service.get_history(me, limit=500)
    with pytest.raises(InvalidOwner):
        await service.submit("progress", QUICK, owner="a/b")
    with pytest.raises(InvalidOwner):
        async with contextlib.aclosing(service.watch_feed("a b")) as refused:
            await anext(refused)


async def test_the_client_with_a_feed_token(secured: str, worker: object) -> None:
    me = new_owner()
    token = taskcast.sign_feed_token(me, secret=SECRET)
    keyed = taskcast.Client(secured, api_key=KEY)
    task = await keyed.submit("progress", {"total": 600, "step_seconds": 0.05}, owner=me)
    anonymous = taskcast.Client(secured)
    try:
        async with httpx.AsyncClient(base_url=secured, headers=bearer(KEY)) as http:
            await wait_for_state(http, task["task_id"], lambda s: s["state"] == "PROGRESS")
        # The token opens the feed (whose answer holds the running task) and the listing.
        async with contextlib.aclosing(anonymous.watch_feed(me, token=token)) as feed:
            assert (await anext(feed))["task_id"] == task["task_id"]
        listed = await anonymous.get_history(me, token=token)
        assert [t["task_id"] for t in listed["tasks"]] == [task["task_id"]]
    finally:
        await keyed.cancel(task["task_id"])
    with pytest.raises(Unauthorized):
        await anonymous.get_history(me + "2", token=token)
    with pytest.raises(Unauthorized):
        async with contextlib.aclosing(anonymous.watch_feed(me + "2", token=token)) as other:
            await anext(other)
    # Feed tokens start nothing on this server.
    with pytest.raises(Forbidden, match="TASKCAST_FEED_TOKENS_MAY_START"):
        await anonymous.submit("progress", QUICK, owner=me, token=token)


def test_lines() -> None:
    status = {
        "task_id": "1f0c9e2a-0000-4000-8000-000000000000", "state": "PROGRESS", "final": False,
        "stalled": False, "result": None, "error": None,
        "progress": {"current": 2, "total": 5, "percent": 40.0, "message": None, "eta_s": None},
    }  # fmt: skip
    assert feed_line(status, "taskcast.progress") == (
        "1f0c9e2a  taskcast.progress  PROGRESS   40.0%  2/5  ETA -"
    )
    assert feed_line({**status, "progress": None, "state": "SENT"}, None) == (
        "1f0c9e2a  -  SENT      queued: waiting for a worker"
    )
    task = {
        "task_id": "1f0c9e2a", "sent_at": 1767225600000, "name": "taskcast.progress",
        "state": "SUCCESS", "error": None, "result": {"status": "completed"},
    }  # fmt: skip
    assert history_line(task) == (
        "1f0c9e2a  2026-01-01 00:00:00  taskcast.progress  SUCCESS   "
        'result: {"status": "completed"}'
    )


async def test_taskcast_feed_follows_live_and_lists(
    base_url: str, client: httpx.AsyncClient
) -> None:
    me = new_owner()
    done = start_owned(me, tags=("old",))
    await wait_for_state(client, done, final)
    # A task that runs while the command starts: the feed's answer holds it, so its
    # first line says the command is subscribed.
    running = start_owned(me, total=600, step_seconds=0.05)
    await wait_for_state(client, running, lambda status: status["state"] == "PROGRESS")
    lines: list[str] = []
    try:
        async with cli("feed", me, "--url", base_url) as process, asyncio.timeout(30):
            assert process.stdout is not None
            first = (await process.stdout.readline()).decode()
            assert first.startswith(f"{running[:8]}  taskcast.progress  PROGRESS"), first
            response = await client.post("/tasks/progress", params={"owner": me}, json=QUICK)
            fresh = response.json()["task_id"]
            while not (lines and lines[-1].startswith(f"{fresh[:8]}  taskcast.progress  SUCCESS")):
                text = (await process.stdout.readline()).decode()
                assert text, "taskcast feed ended"
                lines.append(text.rstrip("\n"))
    finally:
        await client.delete(f"/tasks/{running}")
    # Its name learnt from the history's first page; a task that ended before never shows.
    assert any(text.startswith(f"{fresh[:8]}  taskcast.progress  SENT") for text in lines)
    assert all(not text.startswith(done[:8]) for text in lines)
    code, out, err = await run_cli("feed", me, "--list", "--url", base_url)
    assert (code, err) == (Exit.SUCCESS, "")
    assert [text.split()[0] for text in out.splitlines()] == [fresh, running, done]
    code, out, _ = await run_cli("feed", me, "--list", "--limit", "1", "--url", base_url)
    assert out.splitlines()[0].split()[0] == fresh
    assert out.splitlines()[-1].startswith("next page: --cursor ")
    code, out, _ = await run_cli("feed", me, "--list", "--tag", "old", "--url", base_url)
    assert [text.split()[0] for text in out.splitlines()] == [done]


async def test_taskcast_feed_errors(base_url: str, secured: str) -> None:
    env = {**os.environ, "TASKCAST_URL": base_url}
    cases = [
        (("feed", "a b", "--list"), Exit.REJECTED, "taskcast: an owner is"),
        (("feed", "a b"), Exit.REJECTED, "taskcast: an owner is"),
        (("feed", "user:1", "--list", "--limit", "0"), Exit.REJECTED, "taskcast: limit:"),
        (("feed", "user:1", "--list", "--url", secured), Exit.UNAUTHORIZED, "taskcast: the feed"),
        (("feed", "user:1", "--url", secured), Exit.UNAUTHORIZED, "taskcast: the feed"),
    ]
    results = await asyncio.gather(*(run_cli(*args, env=env) for args, _, _ in cases))
    for (args, wanted, message), (code, out, err) in zip(cases, results, strict=True):
        assert (code, out) == (wanted, ""), (args, err)
        assert err.startswith(message) and err.count("\n") == 1, (args, err)
