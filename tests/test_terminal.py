"""``taskcast submit``, ``submit-group`` and ``watch``: real processes against the live test
server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from rich.console import Console

from taskcast import client as taskcast
from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from taskcast.cli.main import WatchTarget, watch_target
from taskcast.cli.terminal import Exit, format_eta, group_line, group_summary, show, status_line
from taskcast_celery import keys
from tests import env
from tests.support import (
    beat,
    cli,
    eventually,
    run_cli,
    running_record,
    running_server,
    settings_with,
    submit,
    wait_for_state,
)

RUNNING: dict[str, Any] = {
    "task_id": "t", "state": "PROGRESS", "final": False, "stalled": False, "result": None,
    "error": None, "progress": {"current": 2, "total": 5, "percent": 40.0, "message": "rows [2]",
                                "rate": 1.5, "eta_s": 2.1},
}  # fmt: skip
# What the service sends while the task's worker is silent: no ETA.
STALLED: dict[str, Any] = {
    **RUNNING,
    "stalled": True,
    "progress": {**RUNNING["progress"], "eta_s": None},
}


def test_status_lines() -> None:
    assert status_line(RUNNING) == "PROGRESS   40.0%  2/5  ETA 0:03  rows [2]"
    assert status_line(STALLED) == (
        "PROGRESS   40.0%  2/5  STALLED: no heartbeat from its worker  rows [2]"
    )
    revoked = {**RUNNING, "state": "REVOKED", "final": True, "progress": None,
               "error": {"type": "TaskRevokedError", "message": "revoked"}}  # fmt: skip
    assert status_line(revoked) == "REVOKED   TaskRevokedError: revoked"
    # A state with no progress says what it means; a bare "SENT" said little.
    waiting = {**revoked, "final": False, "error": None}
    assert status_line({**waiting, "state": "SENT"}) == "SENT      queued: waiting for a worker"
    assert status_line({**waiting, "state": "STARTED"}) == "STARTED   running"
    assert status_line({**waiting, "state": "CUSTOM"}) == "CUSTOM"


def test_group_lines() -> None:
    running = {
        "group_id": "g", "state": "PROGRESS", "final": False, "stalled": False, "size": 5,
        "done": 2, "states": {"PROGRESS": 3, "SUCCESS": 1, "FAILURE": 1},
        "progress": {"current": 7, "total": 15, "percent": 46.67, "eta_s": 2.1},
        "failures": [{"task_id": "t4", "state": "FAILURE",
                      "error": {"type": "RuntimeError", "message": "failed at step 1 of 3"}}],
        "stalled_tasks": [],
    }  # fmt: skip
    assert group_line(running) == "PROGRESS   46.7%  2/5 done  1 failed  ETA 0:03"
    stalled = {**running, "stalled": True, "stalled_tasks": ["t1", "t2"],
               "progress": {**running["progress"], "eta_s": None}}  # fmt: skip
    assert group_line(stalled) == (
        "PROGRESS   46.7%  2/5 done  1 failed  STALLED: 2 tasks without a worker heartbeat"
    )
    revoked = {"task_id": "t5", "state": "REVOKED",
               "error": {"type": "TaskRevokedError", "message": "revoked"}}  # fmt: skip
    ended = {**running, "state": "FAILURE", "final": True, "done": 5,
             "states": {"SUCCESS": 3, "FAILURE": 1, "REVOKED": 1},
             "progress": {"current": 15, "total": 15, "percent": 100.0, "eta_s": 0.0},
             "failures": [*running["failures"], revoked]}  # fmt: skip
    # The final line, then every member that did not succeed; a cancelled one is not a failure.
    assert group_summary(ended).splitlines() == [
        "FAILURE   100.0%  5/5 done  1 failed  1 revoked",
        "  t4  FAILURE   RuntimeError: failed at step 1 of 3",
        "  t5  REVOKED   TaskRevokedError: revoked",
    ]


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
    # The last step's 100% is said once, by the final line (it was a line of its own).
    assert sum("100.0%" in line for line in changes) == 1


async def test_watch_follows_the_links_submit_printed_without_url(base_url: str) -> None:
    code, out, _ = await run_cli(
        "submit", "progress", "--total", "2", "--step-seconds", "0.05", "--url", base_url
    )
    assert code == Exit.SUCCESS
    status_url, ws_url = (line.split()[1] for line in out.splitlines()[1:3])
    group_code, group_out, _ = await run_cli(
        "submit-group", "sleep", "--count", "2", "--seconds", "0", "--url", base_url
    )
    assert group_code == Exit.SUCCESS
    group_ws_url = group_out.splitlines()[2].split()[1]
    # Somewhere else by default: only the link can have named the service.
    elsewhere = {**os.environ, "TASKCAST_URL": f"http://127.0.0.1:{free_port()}"}
    results = await asyncio.gather(
        *(run_cli("watch", link, env=elsewhere) for link in (ws_url, status_url, group_ws_url))
    )
    for link, (code, out, err) in zip((ws_url, status_url, group_ws_url), results, strict=True):
        assert (code, err) == (Exit.SUCCESS, ""), link
        assert out.splitlines()[-1].startswith("SUCCESS"), (link, out)
    code, out, err = await run_cli("watch", f"{base_url}/healthz", env=elsewhere)
    assert (code, out) == (Exit.REJECTED, "")
    assert err.startswith(f"taskcast: {base_url}/healthz is not a task id nor a link"), err


def test_a_link_names_its_service_its_id_and_whether_a_group() -> None:
    default = "http://127.0.0.1:8000"
    assert watch_target("abc", default) == WatchTarget(default, "abc", False)
    assert watch_target("wss://tasks.example.com/ws/tasks/abc", default) == WatchTarget(
        "https://tasks.example.com", "abc", False
    )
    # A service mounted under a path keeps it; a trailing slash is fine.
    assert watch_target("http://h:81/api/groups/abc/", default) == WatchTarget(
        "http://h:81/api", "abc", True
    )
    # A link handed out with a watch token carries it.
    assert watch_target("http://h/jobs/tasks/abc?token=t.k", default) == WatchTarget(
        "http://h/jobs", "abc", False, "t.k"
    )
    for not_a_link in ("ftp://h/tasks/abc", "http://h/tasks/", "http:///tasks/abc", "http://h/x"):
        assert watch_target(not_a_link, default) is None, not_a_link


async def test_version_is_printed() -> None:
    code, out, err = await run_cli("--version")
    assert (code, err) == (0, "")
    assert re.fullmatch(r"taskcast \d+\.\d+\.\d+\S*\n", out)


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
        (("watch", "--group", missing), Exit.NOT_FOUND, f"taskcast: no group with id {missing}"),
        (("watch", "--group", "x"), Exit.REJECTED, "taskcast: group id must be a UUID"),
        (("submit-group", "sleep", "--count", "0"), Exit.REJECTED,
         "taskcast: count: Input should be greater than or equal to 1"),
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
    assert "the service has no task named 'nope' (it exposes: progress, sleep, email)" in err


async def test_watch_wants_a_task_or_a_group(base_url: str) -> None:
    code, _, err = await run_cli("watch", "--url", base_url)
    assert code == 2
    assert "one of the arguments TASK_ID --group is required" in err


async def test_submit_group_and_watch_until_success(base_url: str) -> None:
    code, out, err = await run_cli(
        "submit-group", "progress", "--count", "3", "--total", "2", "--step-seconds", "0.02",
        "--watch", "--url", base_url,
    )  # fmt: skip
    assert (code, err) == (Exit.SUCCESS, "")
    lines = out.splitlines()
    group_id = lines[0]
    assert uuid.UUID(group_id)
    assert lines[1] == f"  status  {base_url}/groups/{group_id}"
    assert lines[2] == f"  live    {base_url.replace('http', 'ws')}/ws/groups/{group_id}"
    label, *members = lines[3].split()
    assert label == "tasks" and len(members) == 3 and all(uuid.UUID(m) for m in members)
    changes = lines[4:]
    assert "\x1b" not in out
    dones = [int(m[1]) for line in changes if (m := re.search(r"(\d)/3 done", line))]
    assert len(dones) == len(changes) and dones == sorted(dones)
    assert changes[-1] == "SUCCESS   100.0%  3/3 done  0 failed"
    assert sum(line.startswith("SUCCESS") for line in changes) == 1


async def test_watch_group_exits_with_how_the_group_ended(base_url: str) -> None:
    ok = {"total": 2, "step_seconds": 0.02}
    mixed = await taskcast.submit_group(base_url, "progress", tasks=[ok, {**ok, "fail_at": 1}, ok])
    fine = await taskcast.submit_group(base_url, "progress", count=2, params=ok)
    (failed_code, failed_out, failed_err), (fine_code, fine_out, fine_err) = await asyncio.gather(
        run_cli("watch", "--group", mixed["group_id"], "--url", base_url),
        run_cli("watch", "--group", fine["group_id"], "--url", base_url),
    )
    assert (failed_code, failed_err) == (Exit.FAILURE, "")
    *changes, last, failure = failed_out.splitlines()
    assert all(line.split()[0] in {"SENT", "PROGRESS"} for line in changes)
    assert last == "FAILURE   100.0%  3/3 done  1 failed"
    # Which member failed, and why.
    assert failure == f"  {mixed['task_ids'][1]}  FAILURE   RuntimeError: failed at step 1 of 2"
    assert (fine_code, fine_err) == (Exit.SUCCESS, "")
    assert fine_out.splitlines()[-1] == "SUCCESS   100.0%  2/2 done  0 failed"


async def test_submit_group_takes_optional_parameters_typed(base_url: str) -> None:
    # fail_at is optional (int or nothing): given, it is sent as a number.
    code, out, err = await run_cli(
        "submit-group", "progress", "--count", "2", "--total", "2", "--step-seconds", "0.02",
        "--fail-at", "2", "--watch", "--url", base_url,
    )  # fmt: skip
    assert (code, err) == (Exit.FAILURE, "")
    lines = out.splitlines()
    assert lines[-3] == "FAILURE   100.0%  2/2 done  2 failed"
    assert all(
        line.endswith("  FAILURE   RuntimeError: failed at step 2 of 2") for line in lines[-2:]
    )


@pytest.fixture
async def quick_to_stall() -> AsyncIterator[str]:
    """A service that calls a running task stalled after 1 s without a heartbeat."""
    settings = settings_with(stall_after=1.0)
    async with running_server(create_app(settings=settings)) as url:
        yield url


async def test_watch_marks_a_stalled_task_until_its_worker_is_heard_again(
    quick_to_stall: str, redis_client: redis.Redis
) -> None:
    # No worker runs it: its records and heartbeats are written here, as a worker would.
    task_id = str(uuid.uuid4())
    running_record(redis_client, task_id)
    beat(redis_client, task_id, ago_s=10)
    async with cli("watch", task_id, "--url", quick_to_stall) as process, asyncio.timeout(30):
        assert process.stdout is not None
        stalled = (await process.stdout.readline()).decode().rstrip()
        assert stalled == "PROGRESS   40.0%  2/5  STALLED: no heartbeat from its worker"
        beat(redis_client, task_id, ago_s=0)
        heard = (await process.stdout.readline()).decode().rstrip()
        assert heard == "PROGRESS   40.0%  2/5  ETA -"
        done = {"status": "SUCCESS", "result": {"status": "completed"}, "task_id": task_id,
                "progress": {"current": 5, "total": 5}}  # fmt: skip
        key = keys.task_meta_key(env.KEY_PREFIX, task_id)
        redis_client.set(key, json.dumps(done))
        out, err = await process.communicate()
    assert (process.returncode, err) == (Exit.SUCCESS, b"")
    assert out.decode().splitlines() == ['SUCCESS   100.0%  5/5  result: {"status": "completed"}']


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


async def test_in_a_pipe_a_change_the_line_does_not_show_prints_nothing() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=False, width=100)

    async def statuses() -> AsyncIterator[dict[str, Any]]:
        yield RUNNING
        # Only the rate changed, which the line does not show.
        yield {**RUNNING, "progress": {**RUNNING["progress"], "rate": 2.0}}
        yield STALLED
        yield {**RUNNING, "state": "SUCCESS", "final": True, "progress": None, "result": 1}

    await show(statuses(), console)
    assert screen.getvalue().splitlines() == [
        "PROGRESS   40.0%  2/5  ETA 0:03  rows [2]",
        "PROGRESS   40.0%  2/5  STALLED: no heartbeat from its worker  rows [2]",
        "SUCCESS   result: 1",
    ]


async def test_on_a_terminal_a_stalled_task_says_so_in_its_bar() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)

    def drawn_since(marker: str) -> str:
        drawn = screen.getvalue()
        return drawn[drawn.rindex(marker) :] if marker in drawn else ""

    async def statuses() -> AsyncIterator[dict[str, Any]]:
        # Each status stays until the bar, redrawn about ten times a second, has shown it.
        yield STALLED
        await eventually(lambda: drawn_since("STALLED"), bool)
        yield RUNNING
        await eventually(lambda: drawn_since("STALLED"), lambda d: "ETA 0:03" in d)
        yield {**RUNNING, "state": "SUCCESS", "final": True, "result": 1}

    async with asyncio.timeout(20):
        await show(statuses(), console)
    assert "STALLED" in screen.getvalue()
