"""Debian's Chromium for the browser tests, one per test session, driven by Playwright.

Chromium is installed with apt-get by the first test that needs it where
``/usr/bin/chromium`` is missing; Playwright only drives it (its own browser downloads
are never used). conftest.py makes ``chromium`` and ``browser`` every test's fixtures.

And the page that drives taskcast.js, the service's JavaScript client, in the tests that
follow tasks with it (tests/test_js_client.py, tests/test_proxy.py): ``open_harness``
serves ``/js-client/page.html`` at the service's origin, under the demo page's
Content-Security-Policy (Playwright's ``page.route``), with a module script that imports
``/static/taskcast.js`` as any app would and records every callback in ``window.log``;
``check_followed`` checks one task's callbacks there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright

from taskcast.api.demo import _HEADERS as DEMO_HEADERS
from tests.support import ROOT, apt_install

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Else Chromium itself keeps a page of a public site (here, one the test serves as
    # evil.test) from reaching 127.0.0.1: the service must be what refuses it.
    "--disable-features=LocalNetworkAccessChecks",
]
ARTIFACTS = Path(ROOT) / "artifacts" / "browser"
# How long a DOM condition may take: tasks here last a few seconds at most.
WAIT_MS = 15_000


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get if missing."""
    return apt_install("chromium", CHROMIUM)


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


# -- taskcast.js in a page of the service's own origin ----------------------------------

PAGE_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>taskcast.js</title>
<script type="module" src="/js-client/harness.js"></script>
</head><body></body></html>"""

# What the tests call in the page: newClient(options) makes `window.client`, recording
# its connection states and client-level errors; follow(kind, id, token) subscribes,
# recording every callback of that subscription in `window.log` as {id, name, value};
# followFeed(owner, token) does the same for an owner's feed.
HARNESS_JS = """
import * as taskcast from "/static/taskcast.js";

window.taskcast = taskcast;
window.log = [];
window.connections = [];
window.clientErrors = [];
window.unsubscribers = {};

const brief = (error) => ({
  code: error.code, detail: error.detail, status: error.status, retrying: error.retrying,
  taskId: error.taskId, groupId: error.groupId, feed: error.feed,
  isError: error instanceof taskcast.TaskcastError,
});

window.newClient = (options = {}) => {
  window.client = new taskcast.TaskcastClient({
    ...options,
    onConnection: (state, detail) => window.connections.push({ state, ...detail }),
    onError: (error) => window.clientErrors.push(brief(error)),
  });
  return window.client;
};

window.follow = (kind, id, token, extra = {}) => {
  const push = (name, value) => window.log.push({ id, name, value });
  const handlers = {
    token,
    onStatus: (status) => push("status", status),
    onStalled: (stalled) => push("stalled", stalled),
    onProgress: (progress) => push("progress", progress),
    onSuccess: (result) => push("success", result),
    onFailure: (failure) => push("failure", failure),
    onMemberFailure: (failure) => push("member_failure", failure),
    onFinal: (ending) => push("final", ending),
    onError: (error) => push("error", brief(error)),
    ...extra,
  };
  const stop = kind === "group"
    ? window.client.subscribeGroup(id, handlers)
    : window.client.subscribe(id, handlers);
  window.unsubscribers[id] = stop;
};

// Follows an owner's feed, recording its callbacks in `window.log` as {id: owner, name,
// value}: "snapshot" (the list of statuses), "status", "error".
window.followFeed = (owner, token, extra = {}) => {
  const push = (name, value) => window.log.push({ id: owner, name, value });
  window.unsubscribers[owner] = window.client.subscribeFeed(owner, {
    token,
    onSnapshot: (tasks) => push("snapshot", tasks),
    onStatus: (status) => push("status", status),
    onError: (error) => push("error", brief(error)),
    ...extra,
  });
};

// Counts of a callback, by name, for the given id (or all).
window.count = (name, id) =>
  window.log.filter((e) => e.name === name && (id === undefined || e.id === id)).length;

window.harnessReady = true;
"""


@dataclass
class Harness:
    """A page with taskcast.js loaded, the script errors it raised, and the WebSockets
    it opened (their URLs) with the frames it sent on them."""

    page: Page
    errors: list[Exception] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    async def run(self, script: str, arg: Any = None) -> Any:
        """What ``script`` (a JavaScript expression or function) gives in the page."""
        return await self.page.evaluate(script, arg)

    async def until(self, condition: str, arg: Any = None) -> None:
        """Wait until the JavaScript function ``condition`` holds in the page."""
        await self.page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)

    async def log(self) -> list[dict[str, Any]]:
        """Every callback recorded so far, as ``{id, name, value}``."""
        entries: list[dict[str, Any]] = await self.page.evaluate("window.log")
        return entries


async def open_harness(context: BrowserContext, base_url: str) -> Harness:
    """The test page at ``base_url``'s origin, with the client loaded."""
    page = await context.new_page()
    harness = Harness(page)
    page.on("pageerror", lambda error: harness.errors.append(error))

    def watch_socket(socket: Any) -> None:
        harness.sockets.append(socket.url)
        socket.on("framesent", lambda frame: harness.sent.append(json.loads(frame)))

    page.on("websocket", watch_socket)
    page.on("request", lambda request: harness.requests.append(request.url))

    async def serve(route: Route) -> None:
        if route.request.url.endswith("/harness.js"):
            await route.fulfill(body=HARNESS_JS, content_type="text/javascript")
        else:
            # The demo page's own policy: the client must work under it.
            await route.fulfill(body=PAGE_HTML, content_type="text/html", headers=DEMO_HEADERS)

    await page.route(f"{base_url}/js-client/*", serve)
    await page.goto(f"{base_url}/js-client/page.html")
    await page.wait_for_function("window.harnessReady === true", timeout=WAIT_MS)
    return harness


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal but for the estimates, which the service recomputes per subscription."""

    def strip(status: dict[str, Any]) -> dict[str, Any]:
        progress = status.get("progress")
        if isinstance(progress, dict):
            progress = {k: v for k, v in progress.items() if k not in ("rate", "eta_s")}
        return {**status, "progress": progress}

    return strip(a) == strip(b)


_RANK = {"SENT": 0, "STARTED": 1, "PROGRESS": 2, "SUCCESS": 3, "FAILURE": 3, "REVOKED": 3}


def check_followed(log: list[dict[str, Any]], task_id: str, final_state: str) -> None:
    """One task's callbacks: statuses never repeated nor going backwards (by state, and
    by `current` within PROGRESS: the tests' tasks never retry), nothing after the final,
    which ends in ``final_state``, and exactly one onFinal, last."""
    own = [entry for entry in log if entry["id"] == task_id]
    statuses = [entry["value"] for entry in own if entry["name"] == "status"]
    assert statuses, own
    for i, status in enumerate(statuses):
        assert not any(_same(status, other) for other in statuses[:i]), statuses
    ranks = [_RANK[status["state"]] for status in statuses]
    assert ranks == sorted(ranks), [s["state"] for s in statuses]
    currents = [s["progress"]["current"] for s in statuses if s["state"] == "PROGRESS"]
    assert currents == sorted(currents), statuses
    assert [s["final"] for s in statuses].count(True) == 1, statuses
    assert statuses[-1]["final"] and statuses[-1]["state"] == final_state, statuses
    finals = [entry for entry in own if entry["name"] == "final"]
    assert len(finals) == 1 and own[-1] is finals[0], own
    assert finals[0]["value"] == statuses[-1]


# Submits `count` tasks (their names and params taken in turn from `spec`), following
# each as soon as it is accepted, on `window.client` (a new one if there is none).
FOLLOW_SUBMITTED = """async ({ count, spec }) => {
    const client = window.client || newClient();
    client.connect();
    const ids = [];
    for (let i = 0; i < count; i += 1) {
        const [name, params] = spec[i % spec.length];
        const reply = await client.submit(name, params);
        ids.push(reply.task_id);
        follow("task", reply.task_id, reply.token);
    }
    return ids;
}"""
