"""Debian's Chromium for the browser tests, one per test session, driven by Playwright.

Chromium is installed with apt-get by the first test that needs it where
``/usr/bin/chromium`` is missing; Playwright only drives it (its own browser downloads
are never used). conftest.py makes ``chromium`` and ``browser`` every test's fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.support import ROOT

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
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium package (as root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # Wait for a dpkg lock held by another install (other test runs on this machine).
        lock = ["-o", "DPkg::Lock::Timeout=120"]
        for argv, timeout in (
            (["apt-get", *lock, "update", "-q"], 90),
            (["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", "chromium"], 180),
        ):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()
