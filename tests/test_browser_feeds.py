"""The demo page's "My tasks" in real headless Chromium, against the real service, worker
and Redis: two browser contexts (two browsers, as far as the page can tell: nothing
shared) given the same owner see the same tasks live, and a reload loses none.

The page shot with both tasks ended is saved as ``artifacts/browser/my-tasks.png``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Locator, Page, expect

from tests.browser import ARTIFACTS, WAIT_MS
from tests.support import WorkerProcess
from tests.test_browser import start

pytestmark = pytest.mark.timeout(300)


def mine(page: Page, task_id: str) -> Locator:
    """The task's line in "My tasks"."""
    return page.locator(f'.mine-task[data-task-id="{task_id}"]')


async def expect_mine(page: Page, task_id: str, state: str) -> None:
    await expect(mine(page, task_id).locator(".mine-state")).to_have_text(state, timeout=WAIT_MS)


@pytest.fixture
async def two_pages(browser: Browser, base_url: str) -> AsyncIterator[tuple[Page, Page, str]]:
    """The demo page in two contexts, both told the same new owner by its address."""
    owner = f"demo:{uuid.uuid4().hex[:10]}"
    contexts = [await browser.new_context(viewport={"width": 1100, "height": 900}) for _ in "12"]
    errors: list[Exception] = []
    pages = []
    try:
        for context in contexts:
            page = await context.new_page()
            page.on("pageerror", lambda error: errors.append(error))
            await page.goto(f"{base_url}/?owner={owner}")
            await expect(page.locator("#connection")).to_have_attribute("data-state", "open")
            await expect(page.get_by_label("Owner")).to_have_value(owner)
            pages.append(page)
        yield pages[0], pages[1], owner
    finally:
        for context in contexts:
            await context.close()
    assert not errors, errors


async def test_my_tasks_is_the_same_live_list_in_two_browsers_and_survives_a_reload(
    two_pages: tuple[Page, Page, str], base_url: str, worker: WorkerProcess
) -> None:
    one, two, owner = two_pages
    await expect(two.locator("#mine-status")).to_have_text(f"No tasks of {owner} yet.")
    # Started in one; followed live in the other, which never started it: seen running
    # (so told by the feed, not read after the end), then ended.
    _, counting = await start(one, "progress", total=12, step_seconds=0.25)
    await expect(mine(two, counting)).to_be_visible(timeout=WAIT_MS)
    await expect_mine(two, counting, "PROGRESS")
    # Started in the other while the first runs: the first sees it too.
    _, sleeping = await start(two, "sleep", seconds=0)
    await expect_mine(one, sleeping, "SUCCESS")
    for page in (one, two):
        await expect_mine(page, counting, "SUCCESS")
        await expect_mine(page, sleeping, "SUCCESS")
        # The same list, newest first, each named (by the page that started it, or by the
        # owner's history in the other).
        await expect(page.locator(".mine-task")).to_have_count(2)
        lines = page.locator(".mine-task")
        await expect(lines.nth(0)).to_have_attribute("data-task-id", sleeping)
        await expect(lines.nth(1)).to_have_attribute("data-task-id", counting)
        await expect(mine(page, counting).locator(".mine-name")).to_contain_text("progress")
        await expect(mine(page, sleeping).locator(".mine-name")).to_contain_text("sleep")
    # A task of the page's own "Tasks" list is the owner's: it is in both lists there.
    await expect(one.locator(f'.task[data-task-id="{counting}"]')).to_have_count(1)
    await expect(two.locator(f'.task[data-task-id="{counting}"]')).to_have_count(0)
    await one.screenshot(path=ARTIFACTS / "my-tasks.png", full_page=True)

    # A reload, without ?owner= now: the browser kept its owner, and the history lists
    # every task, ended ones included.
    await two.goto(f"{base_url}/")
    await expect(two.get_by_label("Owner")).to_have_value(owner)
    await expect(two.locator(".mine-task")).to_have_count(2, timeout=WAIT_MS)
    await expect_mine(two, counting, "SUCCESS")
    await expect_mine(two, sleeping, "SUCCESS")
    await expect(two.locator("#mine-status")).to_have_text(f"2 tasks of {owner}, 0 unfinished.")

    # Another owner typed in: another (empty) list; the first page is not affected.
    field = two.get_by_label("Owner")
    await field.fill(f"{owner}-other")
    await field.press("Enter")
    await expect(two.locator(".mine-task")).to_have_count(0, timeout=WAIT_MS)
    await expect(two.locator("#mine-status")).to_have_text(f"No tasks of {owner}-other yet.")
    await expect(one.locator(".mine-task")).to_have_count(2)
