"""Front ends that are not taskcast's own, in a real Chromium against the real service:
celery-progress's JavaScript (both its bars, the files taken unchanged from the
celery-progress package), and a browser's own EventSource.

Each page is served by the test at the service's own origin (Playwright's ``page.route``),
as a Django template would serve it next to celery-progress's endpoints.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import celery_progress
import httpx
import pytest
from playwright.async_api import Browser, Page, Route, expect

from taskcast.live.hub import Hub
from tests.browser import WAIT_MS
from tests.support import WorkerProcess, submit

pytestmark = pytest.mark.timeout(300)

PACKAGE_STATIC = Path(celery_progress.__file__).parent / "static" / "celery_progress"
# celery-progress's bar colours (CeleryProgressBar.getBarColorsDefault), as computed.
SUCCESS_COLOR = "rgb(118, 206, 96)"
ERROR_COLOR = "rgb(220, 79, 99)"

BAR_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>celery-progress</title>
<script src="/celery_progress/celery_progress.js"></script>
<script src="/celery_progress/websockets.js"></script>
</head><body>
<div class="progress-wrapper"><div id="progress-bar" style="width: 0%;">&nbsp;</div></div>
<div id="progress-bar-message">Waiting for progress to start...</div>
<div id="celery-result"></div>
<script>
  window.messages = [];
  new MutationObserver(() => {
    window.messages.push(document.getElementById("progress-bar-message").textContent);
  }).observe(document.getElementById("progress-bar-message"), {childList: true});
  const url = new URLSearchParams(location.search).get("url");
  const Bar = location.search.includes("ws=1") ? CeleryWebSocketProgressBar : CeleryProgressBar;
  Bar.initProgressBar(url, {pollInterval: 100});
</script>
</body></html>"""


@pytest.fixture
async def page(browser: Browser, base_url: str) -> AsyncIterator[Page]:
    """A page of the service's origin whose paths under /celery_progress/ are the
    package's own files, and /bar.html the page above; fails the test on a script error."""
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[Exception] = []
    page.on("pageerror", lambda error: errors.append(error))

    async def serve_package(route: Route) -> None:
        name = route.request.url.rsplit("/", 1)[-1]
        await route.fulfill(
            body=(PACKAGE_STATIC / name).read_bytes(), content_type="text/javascript"
        )

    async def serve_page(route: Route) -> None:
        await route.fulfill(body=BAR_PAGE, content_type="text/html")

    await page.route(f"{base_url}/celery_progress/*.js", serve_package)
    # A regular expression: a glob's * stops at the slashes of the query.
    await page.route(re.compile(re.escape(f"{base_url}/bar.html") + ".*"), serve_page)
    yield page
    await context.close()
    assert not errors, errors


async def follow_bar(page: Page, base_url: str, path: str, websocket: bool) -> None:
    await page.goto(f"{base_url}/bar.html?url={path}{'&ws=1' if websocket else ''}")


@pytest.mark.parametrize("websocket", [False, True], ids=["polling", "websocket"])
async def test_celery_progress_s_bar_runs_a_task_to_success(
    page: Page, base_url: str, client: httpx.AsyncClient, worker: WorkerProcess, websocket: bool
) -> None:
    task_id = await submit(client, "progress", total=5, step_seconds=0.3)
    path = f"/ws/progress/{task_id}/" if websocket else f"/celery-progress/{task_id}/"
    await follow_bar(page, base_url, path, websocket)
    message = page.locator("#progress-bar-message")
    bar = page.locator("#progress-bar")
    # Running: its own "N of 5 processed." line, then success.
    await expect(message).to_have_text(re.compile(r"^\d of 5 processed\. "), timeout=WAIT_MS)
    await expect(message).to_have_text("Success! ", timeout=WAIT_MS)
    await expect(bar).to_have_attribute("style", re.compile(r"width: 100%"))
    assert await bar.evaluate("el => getComputedStyle(el).backgroundColor") == SUCCESS_COLOR
    await expect(page.locator("#celery-result")).to_have_text("[object Object]")
    shown: list[str] = await page.evaluate("window.messages")
    counts = [int(text[0]) for text in shown if re.match(r"^\d of 5 processed", text)]
    assert counts == sorted(counts) and counts[-1] <= 5, shown


@pytest.mark.parametrize("websocket", [False, True], ids=["polling", "websocket"])
async def test_celery_progress_s_bar_shows_a_failing_task_s_error(
    page: Page, base_url: str, client: httpx.AsyncClient, worker: WorkerProcess, websocket: bool
) -> None:
    task_id = await submit(client, "progress", total=3, step_seconds=0.2, fail_at=2)
    path = f"/ws/progress/{task_id}/" if websocket else f"/celery-progress/{task_id}/"
    await follow_bar(page, base_url, path, websocket)
    message = page.locator("#progress-bar-message")
    # With a result element on the page, celery-progress puts the error text there.
    await expect(message).to_have_text("Uh-Oh, something went wrong! ", timeout=WAIT_MS)
    await expect(page.locator("#celery-result")).to_have_text("failed at step 2 of 3")
    bar = page.locator("#progress-bar")
    assert await bar.evaluate("el => getComputedStyle(el).backgroundColor") == ERROR_COLOR


EVENT_SOURCE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>EventSource</title></head><body><script>
  window.statuses = []; window.opens = 0; window.ended = false;
  const source = new EventSource(new URLSearchParams(location.search).get("url"));
  source.onopen = () => { window.opens += 1; };
  source.addEventListener("status", (event) => window.statuses.push(JSON.parse(event.data)));
  source.addEventListener("end", () => { window.ended = true; source.close(); });
</script></body></html>"""


async def test_an_event_source_resumes_after_the_server_drops_it(
    page: Page, base_url: str, client: httpx.AsyncClient, worker: WorkerProcess, hub: Hub
) -> None:
    task_id = await submit(client, "progress", total=12, step_seconds=0.4)

    async def serve_page(route: Route) -> None:
        await route.fulfill(body=EVENT_SOURCE_PAGE, content_type="text/html")

    await page.route(re.compile(re.escape(f"{base_url}/events.html") + ".*"), serve_page)
    await page.goto(f"{base_url}/events.html?url=/sse/tasks/{task_id}")
    await page.wait_for_function(
        "window.statuses.some((s) => s.state === 'PROGRESS')", timeout=WAIT_MS
    )
    # Dropped from the server's side mid-task, as the hub's reaper drops a connection.
    [dropped] = [sub for sub in hub.connections if task_id in sub.watching]
    hub.connections[dropped].cancel()
    await page.wait_for_function("window.ended", timeout=WAIT_MS)
    statuses: list[dict[str, object]] = await page.evaluate("window.statuses")
    opens: int = await page.evaluate("window.opens")
    assert opens == 2  # the browser reconnected on its own, with its Last-Event-ID
    seen = [(s["state"], (s["progress"] or {}).get("current")) for s in statuses]  # type: ignore[union-attr]
    assert len(seen) == len(set(seen)), seen  # nothing twice
    currents = [current for state, current in seen if state == "PROGRESS"]
    assert currents == sorted(currents), seen  # nothing backwards
    assert [s["final"] for s in statuses].count(True) == 1
    assert statuses[-1]["state"] == "SUCCESS"
