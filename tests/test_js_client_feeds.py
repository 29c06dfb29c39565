"""taskcast.js's ``subscribeFeed`` in a real Chromium, against the real service, worker
and Redis: an owner's tasks live over the WebSocket and over Server-Sent Events, each
resumed after the server dropped the client, with the finals that ended meanwhile.

The page is tests/browser.py's harness (``open_harness``); its ``followFeed`` records a
feed's callbacks in ``window.log`` as ``{id: owner, name, value}``. Tasks are started from
this process, owned (``taskcast.owned_by``), as a producer elsewhere would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext

from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from taskcast.live.hub import Hub
from taskcast.live.protocol import feed_key
from taskcast_celery import keys
from tests import env
from tests.browser import Harness, check_followed, open_harness
from tests.owning import new_owner, start_owned
from tests.support import WorkerProcess, eventually, running_server, session_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context()
    yield context
    await context.close()


def ended(task_id: str) -> bool:
    """Whether the task's record says it succeeded (read from Redis, not from the page)."""
    raw = session_app().backend.client.get(keys.task_meta_key(env.KEY_PREFIX, task_id))
    return raw is not None and json.loads(raw)["status"] == "SUCCESS"


def feed_statuses(log: list[dict[str, Any]], me: str, task_id: str) -> list[dict[str, Any]]:
    """Every status of ``task_id`` the feed of ``me`` was told: in its snapshots and live."""
    told: list[dict[str, Any]] = []
    for entry in log:
        if entry["id"] != me:
            continue
        if entry["name"] == "snapshot":
            told += [status for status in entry["value"] if status["task_id"] == task_id]
        elif entry["name"] == "status" and entry["value"]["task_id"] == task_id:
            told.append(entry["value"])
    return told


def check_feed_followed(log: list[dict[str, Any]], me: str, task_id: str) -> None:
    """What the feed told of one task: its own owner's, ending in one SUCCESS, nothing
    after it, no status twice (equal but for the estimates, which the service makes per
    subscription; the tests' tasks never retry)."""
    told = feed_statuses(log, me, task_id)
    assert told and all(status["owner"] == me for status in told), told
    assert [status["final"] for status in told].count(True) == 1, told
    assert told[-1]["state"] == "SUCCESS", told
    shown = [json.dumps({**s, "progress": estimated(s["progress"])}) for s in told]
    assert len(set(shown)) == len(shown), told


def estimated(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """Progress without the service's estimates."""
    if progress is None:
        return None
    return {k: v for k, v in progress.items() if k not in ("rate", "eta_s")}


FEED_TOLD = """([me, id, final]) => log.some((e) => e.id === me && (
    (e.name === 'status' && e.value.task_id === id && (!final || e.value.final))
    || (e.name === 'snapshot' && e.value.some((s) => s.task_id === id && (!final || s.final)))))"""


async def test_a_feed_over_the_websocket_then_resumed_after_the_server_dropped_it(
    context: BrowserContext, base_url: str, worker: WorkerProcess, hub: Hub
) -> None:
    me, stranger = new_owner(), new_owner()
    harness = await open_harness(context, base_url)
    running = start_owned(me, total=20, step_seconds=0.1)
    await harness.run("(me) => { newClient(); followFeed(me, null); }", me)
    await harness.until("(me) => count('snapshot', me) === 1", me)
    [snapshot] = [e["value"] for e in await harness.log() if e["name"] == "snapshot"]
    assert [status["task_id"] for status in snapshot] == [running]
    # A new task of the owner's joins the feed; another owner's never does. One task is
    # also followed on its own: its subscription is told each status once, as the feed.
    newer = start_owned(me)
    theirs = start_owned(stranger)
    await harness.run("(id) => follow('task', id, null)", newer)
    for task_id in (newer, running):
        await harness.until(FEED_TOLD, [me, task_id, True])
    await harness.until("(id) => count('final', id) === 1", newer)
    log = await harness.log()
    check_feed_followed(log, me, newer)
    check_feed_followed(log, me, running)
    check_followed(log, newer, "SUCCESS")
    assert not feed_statuses(log, me, theirs)

    # The server drops the socket (what its reaper does to a client that stopped
    # reading): the client subscribes again with since = the feed message's time, and
    # the finals replayed from then on (newer's, running's) are not told twice.
    [dropped] = [sub for sub in hub.connections if feed_key(me) in sub.watching]
    hub.connections[dropped].cancel()
    await harness.until("(me) => count('snapshot', me) === 2", me)
    log = await harness.log()
    check_feed_followed(log, me, newer)
    check_feed_followed(log, me, running)
    feeds = [frame for frame in harness.sent if frame.get("feed") == me]
    assert [frame["op"] for frame in feeds] == ["subscribe", "subscribe"], feeds
    assert "since" not in feeds[0] and isinstance(feeds[1]["since"], int), feeds
    assert len(harness.sockets) == 2
    assert await harness.run("window.clientErrors") == []
    assert not harness.errors, harness.errors


async def test_a_final_that_ended_while_the_service_was_down_reaches_the_feed(
    context: BrowserContext, worker: WorkerProcess
) -> None:
    """Over the WebSocket and over Server-Sent Events: the service stops mid-task (its
    sockets and streams closed), the task ends meanwhile, and the feed resumed on the
    service started again is told the final, once."""
    port = free_port()
    me_ws, me_sse = new_owner(), new_owner()
    async with running_server(create_app(), port=port) as url:
        ws_page = await open_harness(context, url)
        sse_page = await open_harness(context, url)
        await ws_page.run("(me) => { newClient(); followFeed(me, null); }", me_ws)
        await sse_page.run(
            "(me) => { newClient({ transport: 'sse' }); followFeed(me, null); }", me_sse
        )
        for page, me in ((ws_page, me_ws), (sse_page, me_sse)):
            await page.until("(me) => count('snapshot', me) === 1", me)
        # Long enough to be running when the service stops, whatever the load.
        ws_task = start_owned(me_ws, total=30, step_seconds=0.1)
        sse_task = start_owned(me_sse, total=30, step_seconds=0.1)
        for page, me, task_id in ((ws_page, me_ws, ws_task), (sse_page, me_sse, sse_task)):
            await page.until(FEED_TOLD, [me, task_id, False])
    # Down while both end: their finals are in Redis, never sent on any connection.
    await eventually(lambda: ended(ws_task) and ended(sse_task), bool, within=30)
    for page, me, task_id in ((ws_page, me_ws, ws_task), (sse_page, me_sse, sse_task)):
        assert not await page.run(FEED_TOLD, [me, task_id, True])
    async with running_server(create_app(), port=port):
        for page, me, task_id in ((ws_page, me_ws, ws_task), (sse_page, me_sse, sse_task)):
            await page.until(FEED_TOLD, [me, task_id, True])
    for page, me, task_id in ((ws_page, me_ws, ws_task), (sse_page, me_sse, sse_task)):
        check_feed_followed(await page.log(), me, task_id)
        assert not page.errors, page.errors
    # The WebSocket page subscribed again with since; the other never opened a socket.
    feeds = [frame for frame in ws_page.sent if frame.get("feed") == me_ws]
    assert len(feeds) >= 2 and all("since" in frame for frame in feeds[1:]), feeds
    assert sse_page.sockets == []
    streams = [url for url in sse_page.requests if "/sse/feeds/" in url]
    assert streams and all(url.split("/sse/feeds/")[1].startswith("user%3A") for url in streams)


async def test_a_bad_owner_or_a_refused_feed_ends_that_subscription_alone(
    harness_page: Harness,
) -> None:
    harness = harness_page
    await harness.run(
        """() => {
            newClient();
            followFeed("user/42", null);
            followFeed("user:42", "forged");
        }"""
    )
    await harness.until("() => count('error') === 1")
    [error] = [e for e in await harness.log() if e["name"] == "error"]
    assert error["id"] == "user/42" and error["value"]["code"] == "invalid_feed"
    # With tokens off, any token (even a forged one) is no reason to refuse: the feed runs.
    await harness.until("() => count('snapshot', 'user:42') === 1")
    assert await harness.run("window.clientErrors") == []


@pytest.fixture
async def harness_page(context: BrowserContext, base_url: str) -> AsyncIterator[Harness]:
    harness = await open_harness(context, base_url)
    yield harness
    assert not harness.errors, harness.errors
