"""``taskcast submit`` and ``taskcast watch``: real processes against the live test server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import sys
import uuid
from asyncio.subprocess import Process
from collections.abc import AsyncIterator

import httpx
import pytest
from rich.console import Console

from service import client as taskcast
from service.devstack import free_port
from service.terminal import Exit, format_eta, show, status_line
from tests.support import ROOT, submit, wait_for_state


@contextlib.asynccontextmanager
async def cli(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Process]:
    """``python -m service.cli`` with pipes (not a terminal), killed if still running at exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_cli(
    *args: str, env: dict[str, str] | None = None, within: float = 30
) -> tuple[int | None, str, str]:
    """Run the command to its end: exit code, stdout, stderr."""
    async with cli(*args, env=env) as process, asyncio.timeout(within):
        out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


def test_status_lines() -> None:
    running = {
        "task_id": "t", "state": "PROGRESS", "final": False, "result": None, "error": None,
        "progress": {"current": 2, "total": 5, "percent": 40.0, "message": "rows [2]",
                     "rate": 1.5, "eta_s": 2.1},
    }  # fmt: skip
    assert status_line(running) == "PROGRESS   40.0%  2/5  ETA 0:03  rows [2]"
    revoked = {**running, "state": "REVOKED", "final": True, "progress": None,
               "error": {"type": "TaskRevokedError", "message": "revoked"}}  # fmt: skip
    assert status_line(revoked) == "REVOKED   TaskRevokedError: revoked"
    assert status_line({**revoked, "state": "SENT", "final": False, "error": None}) == "SENT"


@pytest.mark.parametrize(
    ("eta_s", "shown"),
    [(None, "-"), (True, "-"), ("3", "-"), (float("inf"), "-"), (0, "0:00"), (0.2, "0:01"),
     (61, "1:01"), (3725, "1:02:05")],
)  # fmt: skip
def test_eta_is_shown_only_when_known(eta_s: object, shown: str) -> None:
    assert format_eta({"current": 1, "total": 2, "eta_s": eta_s}) == shown
    assert format_eta(None) == "-"


async def test_submit_and_watch_until_success(base_url: str) -> None:
    code, out, err = await run_cli(
        "submit", "progress", "--total", "5", "--step-seconds", "0.05", "--watch", "--url", base_url
    )
    assert (code, err) == (Exit.SUCCESS, "")
    lines = out.splitlines()
    task_id = lines[0]
    assert uuid.UUID(task_id)
    assert lines[1] == f"  status  {base_url}/tasks/{task_id}"
    assert lines[2] == f"  live    {base_url.replace('http', 'ws')}/ws/tasks/{task_id}"
    # Not a terminal: one plain line per change, no escape codes, progress never backwards.
    changes = lines[3:]
    assert "\x1b" not in out
    assert changes[0].split()[0] in {"SENT", "STARTED", "PROGRESS"}
    percents = [float(m[1]) for line in changes if (m := re.search(r"([\d.]+)%", line))]
    assert percents == sorted(percents)
    assert changes[-1] == 'SUCCESS   100.0%  5/5  result: {"status": "completed"}'
    assert sum(line.startswith("SUCCESS") for line in changes) == 1


async def test_submit_without_watch_prints_the_id_and_leaves(
    client: httpx.AsyncClient, base_url: str
) -> None:
    code, out, _ = await run_cli("submit", "sleep", "--seconds", "0", "--url", base_url)
    assert code == Exit.SUCCESS
    task_id = out.splitlines()[0]
    await wait_for_state(client, task_id, lambda s: s["final"])


async def test_watch_of_a_revoked_task_fails_with_revoked(
    client: httpx.AsyncClient, base_url: str
) -> None:
    task_id = await submit(client, "sleep", seconds=30)
    async with cli("watch", task_id, "--url", base_url) as process, asyncio.timeout(30):
        assert process.stdout is not None
        # The snapshot is out: the watch is live before the task is cancelled.
        first = (await process.stdout.readline()).decode()
        assert first.split()[0] in {"SENT", "STARTED"}
        assert (await client.delete(f"/tasks/{task_id}")).status_code == 202
        out, err = await process.communicate()
    assert err == b""
    assert process.returncode == Exit.REVOKED
    assert out.decode().splitlines()[-1].startswith("REVOKED   TaskRevokedError: ")


async def test_errors_are_one_line_on_stderr_with_their_exit_codes(base_url: str) -> None:
    missing = str(uuid.uuid4())
    nobody = f"http://127.0.0.1:{free_port()}"
    # TASKCAST_URL stands in for --url.
    env = {**os.environ, "TASKCAST_URL": base_url}
    cases = [
        (("watch", missing), Exit.NOT_FOUND, f"taskcast: no task with id {missing}"),
        (("watch", "not-a-uuid"), Exit.REJECTED, "taskcast: task id must be a UUID"),
        (("watch", missing, "--url", nobody), Exit.UNAVAILABLE,
         f"taskcast: cannot reach {nobody}/tasks/{missing}: Connection refused"),
        (("submit", "progress", "--total", "0"), Exit.REJECTED,
         "taskcast: total: Input should be greater than or equal to 1"),
    ]  # fmt: skip
    results = await asyncio.gather(*(run_cli(*args, env=env) for args, _, _ in cases))
    for (args, expected_code, expected_error), (code, out, err) in zip(cases, results, strict=True):
        assert (code, out) == (expected_code, ""), args
        assert err.count("\n") == 1 and err.startswith(expected_error), (args, err)


async def test_an_unknown_task_name_is_a_usage_error(base_url: str) -> None:
    code, _, err = await run_cli("submit", "nope", "--url", base_url)
    assert code == 2
    assert "invalid choice: 'nope'" in err


async def test_on_a_terminal_the_bar_is_redrawn_in_place(
    client: httpx.AsyncClient, base_url: str
) -> None:
    task_id = await submit(client, "progress", total=5, step_seconds=0.05)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    async with asyncio.timeout(20):
        done = await show(taskcast.watch(base_url, task_id), console)
    assert done["state"] == "SUCCESS"
    drawn = screen.getvalue()
    # The cursor is hidden while the bar is redrawn, then shown again.
    assert drawn.index("\x1b[?25l") < drawn.index("\x1b[?25h")
    assert "━" in drawn and "100.0%" in drawn
    assert drawn.rstrip().endswith('SUCCESS   100.0%  5/5  result: {"status": "completed"}')
