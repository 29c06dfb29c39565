"""The demo page in a real headless Chromium, against the real service, worker and Redis.

Chromium is Debian's (``tests.browser``). The finished page is saved as
``artifacts/browser/demo.png``; one with a finished group as ``group.png``, one with a
stalled task and group as ``stalled.png``, next to it.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
from playwright.async_api import (
    Browser,
    Locator,
    Page,
    Route,
    WebSocketRoute,
    expect,
)

from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from taskcast.live.hub import Hub
from tests import env
from tests.browser import ARTIFACTS, WAIT_MS
from tests.support import (
    WorkerProcess,
    eventually,
    running_server,
    settings_with,
    task_keys,
)

# The first test on a fresh machine also installs Chromium (measured: 11 s with most
# libraries present; allow for a cold download); each test alone takes seconds, and
# every wait below has its own 15 s limit.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def page(browser: Browser, base_url: str) -> AsyncIterator[Page]:
    """The demo page, fresh (its own session storage); fails the test on a script error."""
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    errors: list[Exception] = []
    page.on("pageerror", lambda error: errors.append(error))
    await page.goto(f"{base_url}/")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    yield page
    await context.close()
    assert not errors, errors


async def start(page: Page, task: str, **fields: object) -> tuple[Locator, str]:
    """Fill in a task's form and submit it; the new row and the task's id."""
    form = page.locator(f'form[data-task="{task}"]')
    for name, value in fields.items():
        await form.get_by_label(name, exact=True).fill(str(value))
    rows = page.locator(".task")
    before = await rows.count()
    await form.get_by_role("button", name=f"Start {task}").click()
    await expect(rows).to_have_count(before + 1, timeout=WAIT_MS)
    task_id = await rows.first.get_attribute("data-task-id")  # newest first
    assert task_id
    return row_of(page, task_id), task_id


def row_of(page: Page, task_id: str) -> Locator:
    return page.locator(f'.task[data-task-id="{task_id}"]')


async def expect_state(row: Locator, state: str) -> None:
    await expect(row.locator(".state")).to_have_text(state, timeout=WAIT_MS)


async def start_group(page: Page, task: str, fields: dict[str, object]) -> tuple[Locator, str]:
    """Fill in the group form (``fields`` by label) and submit it; the new row and its id."""
    form = page.locator("#group-form")
    await form.get_by_label("task", exact=True).select_option(task)
    for label, value in fields.items():
        await form.get_by_label(label, exact=True).fill(str(value))
    rows = page.locator(".group")
    before = await rows.count()
    await form.get_by_role("button", name="Start group").click()
    await expect(rows).to_have_count(before + 1, timeout=WAIT_MS)
    group_id = await rows.first.get_attribute("data-group-id")  # newest first
    assert group_id
    return group_row(page, group_id), group_id


def group_row(page: Page, group_id: str) -> Locator:
    return page.locator(f'.group[data-group-id="{group_id}"]')


async def test_progress_runs_to_success_and_survives_a_reload(page: Page) -> None:
    row, task_id = await start(page, "progress", total=10, step_seconds=0.2)
    bar = row.get_by_role("progressbar")
    await expect(bar).to_have_attribute("aria-valuemin", "0")
    await expect(bar).to_have_attribute("aria-valuemax", "100")
    # Seen part way, then at the end: the bar moves with the task, not just at its end.
    await page.wait_for_function(
        "bar => { const v = Number(bar.getAttribute('aria-valuenow')); return v > 0 && v < 100 }",
        arg=await bar.element_handle(),
        polling="raf",
        timeout=WAIT_MS,
    )
    await expect_state(row, "SUCCESS")
    await expect(bar).to_have_attribute("aria-valuenow", "100")
    await expect(row.locator(".percent")).to_have_text("100%")
    await expect(row.locator(".outcome")).to_have_text('Result: {"status":"completed"}')
    await expect(row.get_by_role("button", name="Cancel")).to_be_hidden()

    # Remembered for the session: back after a reload, with its state from the snapshot.
    await page.reload()
    await expect_state(row_of(page, task_id), "SUCCESS")
    await expect(row_of(page, task_id).get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", "100"
    )


async def test_a_refused_task_shows_what_was_wrong(page: Page) -> None:
    form = page.locator('form[data-task="progress"]')
    await form.get_by_label("total", exact=True).fill("0")
    await form.get_by_role("button", name="Start progress").click()
    await expect(form.get_by_role("alert")).to_contain_text(
        re.compile(r"^total: .*greater than or equal to 1")
    )
    # Not JSON at all: said on the page, and nothing is sent.
    email = page.locator('form[data-task="email"]')
    await email.locator('textarea[name="data"]').fill("{rows: 3}")
    await email.get_by_role("button", name="Start email").click()
    await expect(email.get_by_role("alert")).to_contain_text("data: not valid JSON")
    await expect(page.locator(".task")).to_have_count(0)


async def test_cancel_running_tasks_and_save_a_screenshot(page: Page) -> None:
    done, _ = await start(page, "progress", total=5, step_seconds=0.1)
    await expect_state(done, "SUCCESS")
    running, _ = await start(page, "progress", total=200, step_seconds=0.05)
    await expect_state(running, "PROGRESS")
    cancelled, _ = await start(page, "sleep", seconds=60)
    await expect_state(cancelled, "STARTED")

    await cancelled.get_by_role("button", name="Cancel").click()
    await expect_state(cancelled, "REVOKED")
    # Said plainly, in a neutral box: a cancel is not an error (it was a red one).
    outcome = cancelled.locator(".outcome")
    await expect(outcome).to_have_text("Cancelled.")
    await expect(outcome).to_have_class(re.compile(r"\bcancelled\b"))
    await expect(outcome).not_to_have_class(re.compile(r"\bfailed\b"))
    await expect(cancelled.get_by_role("button", name="Cancel")).to_be_hidden()
    await expect(page.locator("#announcer")).to_contain_text("REVOKED")

    # All three kinds at once: finished, running (some way along), revoked.
    await page.wait_for_function(
        "bar => Number(bar.getAttribute('aria-valuenow')) >= 15",
        arg=await running.get_by_role("progressbar").element_handle(),
        timeout=WAIT_MS,
    )
    await page.screenshot(path=ARTIFACTS / "demo.png", full_page=True)
    print(f"screenshot: {ARTIFACTS / 'demo.png'}")

    await running.get_by_role("button", name="Cancel").click()
    await expect_state(running, "REVOKED")


async def test_a_group_with_failing_members_is_one_row_with_one_bar(
    page: Page, client: httpx.AsyncClient
) -> None:
    sent: list[dict[str, str]] = []
    page.on(
        "websocket",
        lambda socket: socket.on("framesent", lambda frame: sent.append(json.loads(frame))),
    )
    # The page's socket was open before the listener: a reload makes a new one to watch.
    await page.reload()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    fields = {"count": 6, "total": 3, "step_seconds": 0.05, "members that fail": 2}
    row, group_id = await start_group(page, "progress", fields)
    bar = row.get_by_role("progressbar")
    await expect(bar).to_have_attribute("aria-valuemin", "0")
    await expect(bar).to_have_attribute("aria-valuemax", "100")
    await expect(row.locator(".task-title")).to_have_text(
        re.compile(r"^group of 6\s+progress [0-9a-f]{8}$")
    )
    await expect(row.locator(".task-params")).to_have_text(
        "total=3, step_seconds=0.05; 2 fail at step 2"
    )

    await expect_state(row, "FAILURE")
    await expect(bar).to_have_attribute("aria-valuenow", "100")
    await expect(bar).to_have_attribute("aria-valuetext", "100% (6 of 6 done · 2 failed)")
    await expect(row.locator(".summary")).to_have_text("6 of 6 done · 2 failed")
    await expect(row.locator(".state-counts li")).to_have_text(["SUCCESS 4", "FAILURE 2"])
    failures = row.locator(".failure-list li")
    await expect(failures).to_have_text(
        [re.compile(r"^[0-9a-f]{8} RuntimeError: failed at step 2 of 3$")] * 2
    )
    await expect(row.get_by_role("button", name="Cancel group")).to_be_hidden()
    await expect(page.locator("#announcer")).to_have_text(
        re.compile(r"^group [0-9a-f]{8} of 6 progress tasks: FAILURE, 6 of 6 done · 2 failed$")
    )
    # One row for the whole group: its members have none of their own.
    await expect(page.locator(".task")).to_have_count(1)
    # The members listed are the group's failed ones (their full ids are in the titles).
    status = (await client.get(f"/groups/{group_id}")).json()
    listed = {await failures.nth(i).locator("code").get_attribute("title") for i in range(2)}
    assert listed == {failure["task_id"] for failure in status["failures"]}, status
    assert status["state"] == "FAILURE" and status["done"] == 6, status
    # Followed on the page's one socket, by group id (no watch token: auth is off here).
    assert {"op": "subscribe", "group_id": group_id} in sent, sent
    await page.screenshot(path=ARTIFACTS / "group.png", full_page=True)
    print(f"screenshot: {ARTIFACTS / 'group.png'}")

    # Remembered for the session like tasks; the snapshot brings its final state back.
    await page.reload()
    row = group_row(page, group_id)
    await expect_state(row, "FAILURE")
    await expect(row.locator(".summary")).to_have_text("6 of 6 done · 2 failed")
    await expect(row.locator(".failure-list li")).to_have_count(2)


async def test_a_group_followed_across_a_reload_and_cancelled(page: Page) -> None:
    row, group_id = await start_group(page, "sleep", {"count": 3, "seconds": 60})
    # The worker runs two at a time: two members start, the third waits in the queue.
    await expect(row.locator(".state-counts li")).to_have_text(["STARTED 2", "SENT 1"])
    await expect_state(row, "PROGRESS")
    await expect(row.locator(".summary")).to_have_text("0 of 3 done")

    await page.reload()
    row = group_row(page, group_id)
    await expect_state(row, "PROGRESS")
    await row.get_by_role("button", name="Cancel group").click()
    # Every member cancelled, the running ones and the queued one.
    await expect_state(row, "REVOKED")
    await expect(row.locator(".summary")).to_have_text("3 of 3 done · 3 cancelled")
    await expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    await expect(row.get_by_role("button", name="Cancel group")).to_be_hidden()
    await expect(page.locator("#announcer")).to_contain_text("REVOKED")


async def test_a_refused_group_shows_what_was_wrong(page: Page) -> None:
    form = page.locator("#group-form")
    # More failing members than members: said on the page, and nothing is sent.
    await form.get_by_label("count", exact=True).fill("2")
    await form.get_by_label("members that fail", exact=True).fill("3")
    await form.get_by_role("button", name="Start group").click()
    await expect(form.get_by_role("alert")).to_have_text("members that fail: at most count (2)")
    # The service's own rules: its detail, as is.
    await form.get_by_label("members that fail", exact=True).fill("0")
    await form.get_by_label("count", exact=True).fill("0")
    await form.get_by_role("button", name="Start group").click()
    await expect(form.get_by_role("alert")).to_contain_text("count")
    await expect(form.get_by_role("alert")).not_to_contain_text("members that fail")
    await expect(page.locator(".task")).to_have_count(0)


# What the page shows for a value it does not have (an en dash).
NONE_SHOWN = "\u2013"
STALLED_TASK = "11111111-1111-4111-8111-111111111111"
STALLED_GROUP = "22222222-2222-4222-8222-222222222222"
STALLED_MEMBER = "33333333-3333-4333-8333-333333333333"


def running_task(stalled: bool) -> dict[str, object]:
    """A running task's status message; while stalled the service gives no ETA."""
    return {
        "type": "status",
        "task_id": STALLED_TASK,
        "state": "PROGRESS",
        "final": False,
        "stalled": stalled,
        "progress": {
            "current": 4,
            "total": 10,
            "percent": 40.0,
            "message": None,
            "rate": None if stalled else 2.0,
            "eta_s": None if stalled else 3.0,
        },
        "result": None,
        "error": None,
    }


def running_group(stalled: bool) -> dict[str, object]:
    return {
        "type": "group",
        "group_id": STALLED_GROUP,
        "state": "PROGRESS",
        "final": False,
        "stalled": stalled,
        "size": 3,
        "done": 1,
        "states": {"SUCCESS": 1, "PROGRESS": 2},
        "progress": {"current": 14, "total": 30, "percent": 46.67, "eta_s": None},
        "failures": [],
        "stalled_tasks": [STALLED_MEMBER] if stalled else [],
    }


async def test_a_stalled_task_and_group_are_badged_until_they_run_again(
    browser: Browser, base_url: str
) -> None:
    """The page's side of the stalled flag. The socket is a stand-in that sends what the
    service would (a real stall takes a worker killed mid-task: the service's own tests
    do that); the page itself is the real one, from the real service."""
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[Exception] = []
    page.on("pageerror", lambda error: errors.append(error))
    current: dict[str, dict[str, object]] = {
        STALLED_TASK: running_task(stalled=False),
        STALLED_GROUP: running_group(stalled=False),
    }
    sockets: list[WebSocketRoute] = []

    def serve(socket: WebSocketRoute) -> None:
        # Like the service: each subscribe is answered with the current status.
        def answer(frame: str | bytes) -> None:
            command = json.loads(frame)
            watched = command.get("task_id") or command.get("group_id")
            if command.get("op") == "subscribe" and watched in current:
                socket.send(json.dumps(current[watched]))

        sockets.append(socket)
        socket.on_message(answer)

    def push(message: dict[str, object]) -> None:
        sockets[-1].send(json.dumps(message))

    await context.route_web_socket(re.compile(r"/ws$"), serve)
    try:
        # Both as a page that started them would have saved them.
        await page.goto(f"{base_url}/")
        saved = [
            {"id": STALLED_TASK, "name": "progress", "params": {"total": 10}, "token": None},
            {
                "kind": "group",
                "id": STALLED_GROUP,
                "name": "progress",
                "size": 3,
                "about": "total=10",
                "token": None,
            },
        ]
        await page.evaluate(
            "saved => sessionStorage.setItem('taskcast.tasks', JSON.stringify(saved))", saved
        )
        await page.reload()
        task, group = row_of(page, STALLED_TASK), group_row(page, STALLED_GROUP)
        await expect_state(task, "PROGRESS")
        await expect_state(group, "PROGRESS")
        await expect(task.locator(".eta")).to_have_text("3 s")
        await expect(task.locator(".stall-badge")).to_be_hidden()
        await expect(group.locator(".stall-badge")).to_be_hidden()
        announcer = page.locator("#announcer")

        push(running_task(stalled=True))
        await expect(task.locator(".stall-badge")).to_have_text("stalled")
        await expect(task.locator(".stall-badge")).to_be_visible()
        await expect(task.locator(".eta")).to_have_text(NONE_SHOWN)
        await expect(announcer).to_have_text(
            "progress task 11111111 stalled: no heartbeat from its worker"
        )
        push(running_group(stalled=True))
        await expect(group.locator(".stall-badge")).to_be_visible()
        await expect(group.locator(".stalled-members")).to_have_text(
            "No heartbeat from the worker of: 33333333"
        )
        await expect(announcer).to_have_text(
            "group 22222222 of 3 progress tasks stalled: no heartbeat from the worker of 1 member"
        )

        await page.screenshot(path=ARTIFACTS / "stalled.png", full_page=True)

        # Redelivered and running again: the flag goes back, and so does the badge.
        push(running_task(stalled=False))
        await expect(task.locator(".stall-badge")).to_be_hidden()
        await expect(task.locator(".eta")).to_have_text("3 s")
        await expect(announcer).to_have_text("progress task 11111111 running again: PROGRESS")
        push(running_group(stalled=False))
        await expect(group.locator(".stall-badge")).to_be_hidden()
        await expect(group.locator(".stalled-members")).to_be_hidden()
        await expect(announcer).to_have_text(
            "group 22222222 of 3 progress tasks running again: PROGRESS"
        )
    finally:
        await context.close()
    assert not errors, errors


async def test_reconnects_after_the_server_drops_the_socket(page: Page, hub: Hub) -> None:
    finished, finished_id = await start(page, "sleep", seconds=0)
    await expect_state(finished, "SUCCESS")
    # Long enough to be unfinished when the socket drops, however slow the set-up (they
    # ran 3 s and 2 s, and a slow start once let one end first). They hold both of the
    # session worker's processes, so the group waits in the queue behind them meanwhile.
    counting, counting_id = await start(page, "progress", total=30, step_seconds=0.15)
    sleeping, sleeping_id = await start(page, "sleep", seconds=4.5)
    await expect_state(counting, "PROGRESS")
    await expect_state(sleeping, "STARTED")
    grouped, group_id = await start_group(
        page, "progress", {"count": 2, "total": 10, "step_seconds": 0.15}
    )
    await expect(grouped.locator(".state")).to_have_text(re.compile(r"^(SENT|PROGRESS)$"))

    sent: list[dict[str, str]] = []
    page.on(
        "websocket",
        lambda socket: socket.on("framesent", lambda frame: sent.append(json.loads(frame))),
    )
    # The page's one connection, ended from the server side: its sender is cancelled,
    # as the hub's reaper does with a client that stopped reading (close code 4408).
    [dropped] = [sub for sub in hub.connections if {counting_id, sleeping_id} & sub.watching]
    async with page.expect_websocket(timeout=WAIT_MS) as reconnected:
        hub.connections[dropped].cancel()
    socket = await reconnected.value
    await expect(page.locator("#connection")).to_have_attribute("data-state", "open")

    # Every unfinished task and group, and only those, is followed again on the new
    # socket ...
    await expect_state(counting, "SUCCESS")
    await expect_state(sleeping, "SUCCESS")
    await expect_state(grouped, "SUCCESS")
    tasks_sent = [frame["task_id"] for frame in sent if "task_id" in frame]
    assert sorted(tasks_sent) == sorted([counting_id, sleeping_id])
    assert [frame["group_id"] for frame in sent if "group_id" in frame] == [group_id]
    assert {frame["op"] for frame in sent} == {"subscribe"}
    assert finished_id not in tasks_sent
    # ... which alone could bring their ends: the old one is gone, and there is no polling.
    assert dropped not in hub.connections
    assert not socket.is_closed()
    await expect(counting.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    await expect(grouped.locator(".summary")).to_have_text("2 of 2 done")


# Every state the connection badge takes, in order, with its text.
RECORD_CONNECTION = """() => {
    const badge = document.querySelector("#connection");
    window.connectionStates = [];
    new MutationObserver(() => {
        window.connectionStates.push(`${badge.dataset.state}: ${badge.textContent.trim()}`);
    }).observe(badge, {attributes: true, childList: true, subtree: true, characterData: true});
}"""


async def test_reconnects_after_the_service_restarts(
    browser: Browser, worker: WorkerProcess
) -> None:
    port = free_port()
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[Exception] = []
    page.on("pageerror", lambda error: errors.append(error))
    badge = page.locator("#connection")
    try:
        async with running_server(create_app(), port=port) as url:
            await page.goto(f"{url}/")
            await expect(badge).to_have_attribute("data-state", "open")
            await page.evaluate(RECORD_CONNECTION)
            row, _ = await start(page, "progress", total=30, step_seconds=0.1)
            await expect_state(row, "PROGRESS")
        # Stopped mid-task: uvicorn's shutdown closed the page's socket with 1012. Down
        # until the page's next attempt has been refused too (the badge's states pass in
        # a moment, so they are read from the record, not waited for one by one).
        await page.wait_for_function(
            """() => window.connectionStates.length >= 3
                && window.connectionStates.at(-1).startsWith("closed")""",
            timeout=WAIT_MS,
        )
        async with running_server(create_app(), port=port):
            await expect(badge).to_have_attribute("data-state", "open", timeout=WAIT_MS)
            await expect_state(row, "SUCCESS")
            await expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
            states: list[str] = await page.evaluate("window.connectionStates")
    finally:
        await context.close()
    assert not errors, errors
    # Dropped (1012), reconnecting and refused, reconnecting again, and live.
    assert states[0] == "closed: Disconnected (code 1012); retrying in 1 s", states
    assert states[1] == "connecting: Reconnecting…", states
    assert states[2].startswith("closed: Disconnected; retrying in"), states
    assert states[-2:] == ["connecting: Reconnecting…", "open: Live"], states


async def test_fits_a_phone_screen(browser: Browser, base_url: str) -> None:
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    try:
        await page.goto(f"{base_url}/")
        row, _ = await start(page, "sleep", seconds=0)
        await expect_state(row, "SUCCESS")
        group, _ = await start_group(page, "sleep", {"count": 2, "seconds": 0})
        await expect_state(group, "SUCCESS")
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0
        await page.screenshot(path=ARTIFACTS / "phone.png", full_page=True)
    finally:
        await context.close()


async def test_with_auth_on_the_page_asks_for_a_key_and_follows_with_tokens(
    browser: Browser, worker: WorkerProcess
) -> None:
    key = secrets.token_urlsafe(24)
    settings = settings_with(api_keys=(key,), secret=secrets.token_urlsafe(48))
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[Exception] = []
    page.on("pageerror", lambda error: errors.append(error))
    try:
        async with running_server(create_app(settings=settings)) as url:
            await page.goto(f"{url}/")
            key_form = page.locator("#api-key-form")
            await expect(key_form).to_be_hidden()
            # Refused without a key: the page says why and asks for one.
            form = page.locator('form[data-task="sleep"]')
            await form.get_by_role("button", name="Start sleep").click()
            await expect(form.get_by_role("alert")).to_contain_text("API key is required")
            await expect(key_form).to_be_visible()
            await key_form.get_by_label("key").fill(key)
            await key_form.get_by_role("button", name="Use this key").click()
            # With it, tasks start; each is followed over /ws with its own watch token
            # (the socket has no other credential), and cancelled with the key.
            done, _ = await start(page, "sleep", seconds=0)
            await expect_state(done, "SUCCESS")
            # A group too: the dispatch reply's token is the group's, sent on subscribe.
            group, group_id = await start_group(page, "sleep", {"count": 2, "seconds": 0})
            await expect_state(group, "SUCCESS")
            running, running_id = await start(page, "sleep", seconds=60)
            await expect_state(running, "STARTED")
            await running.get_by_role("button", name="Cancel").click()
            await expect_state(running, "REVOKED")
            # The key and the tokens outlive a reload, for this tab.
            await page.reload()
            await expect(key_form).to_be_visible()
            await expect_state(row_of(page, running_id), "REVOKED")
            await expect_state(group_row(page, group_id), "SUCCESS")
    finally:
        await context.close()
    assert not errors, errors


async def forbidden_origin_count(base_url: str) -> float:
    async with httpx.AsyncClient(base_url=base_url) as http:
        scraped = (await http.get("/metrics")).text
    found = re.search(r"^taskcast_forbidden_origin_total (\S+)$", scraped, re.M)
    assert found is not None, scraped
    return float(found.group(1))


async def test_a_page_of_another_site_cannot_start_work_from_a_browser(
    browser: Browser, base_url: str, redis_client: redis.Redis
) -> None:
    """A page of another site (auth off, as in taskcast dev) tries what needs no CORS
    preflight: a form POST, a no-cors fetch with a text/plain body, an <img>. The browser
    sends them all; the service refuses them all, and nothing is queued."""
    context = await browser.new_context()
    page = await context.new_page()
    attack = f"""<!doctype html><html><body>
      <form id="f" method="post" action="{base_url}/tasks/sleep" target="sink">
        <input name="seconds" value="0"></form>
      <iframe name="sink"></iframe>
      <img src="{base_url}/async-process/?seconds=0">
      <script>
        fetch("{base_url}/tasks/email", {{method: "POST", mode: "no-cors",
          headers: {{"Content-Type": "text/plain"}},
          body: JSON.stringify({{to: "victim@example.com", data: {{}}}})}});
        document.getElementById("f").submit();
      </script></body></html>"""

    async def serve_attack(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html", body=attack)

    before_keys = task_keys(redis_client, env.KEY_PREFIX)
    before = await forbidden_origin_count(base_url)
    await context.route("http://evil.test/**", serve_attack)
    try:
        await page.goto("http://evil.test/")
        # All three reached the service (and were refused there).
        refused = await eventually(
            lambda: forbidden_origin_count(base_url), lambda count: count >= before + 3
        )
        assert refused == before + 3
    finally:
        await context.close()
    assert task_keys(redis_client, env.KEY_PREFIX) == before_keys


async def test_on_a_phone_a_started_task_shows_where_it_is_started(
    browser: Browser, base_url: str
) -> None:
    """390 px wide, the task list sits below every form: a started row scrolled into
    view, or "Start" seemed to do nothing."""
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    page = await context.new_page()
    try:
        await page.goto(f"{base_url}/")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        form = page.locator('form[data-task="sleep"]')
        await form.get_by_label("seconds", exact=True).fill("0")
        await form.get_by_role("button", name="Start sleep").click()
        row = page.locator(".task").first
        await expect(row).to_be_in_viewport()
        await expect(row.locator(".state")).to_have_text("SUCCESS", timeout=WAIT_MS)
        # A finished task says no message (a finished e-mail task still read "sending").
        await expect(row.locator(".message")).to_have_text(NONE_SHOWN)
    finally:
        await context.close()
