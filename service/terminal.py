"""What ``taskcast watch`` and ``taskcast submit`` show in a terminal, and their exit codes.

On a terminal a task is a live progress bar (state, bar, percent, ETA, message). When
the output is not a terminal (a pipe, a file, CI), every change is one plain line,
because redrawing a bar there would leave escape codes or a single final frame.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from enum import IntEnum
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from service.client import (
    InvalidParams,
    InvalidTaskId,
    TaskcastError,
    TaskNotFound,
    Unauthorized,
    UnknownTaskName,
    get_status,
    submit,
    watch,
)


class Exit(IntEnum):
    """Exit codes of ``watch`` and ``submit``; 2 stays argparse's, for a wrong command line."""

    SUCCESS = 0  # the task succeeded (or, without --watch, was queued)
    FAILURE = 1  # the task ended FAILURE
    REVOKED = 3  # the task was cancelled
    NOT_FOUND = 4  # no task with that id, or no task of that name
    REJECTED = 5  # a malformed id, or parameters the task refuses
    UNAVAILABLE = 6  # the service could not be reached, or answered unexpectedly
    UNAUTHORIZED = 7  # no API key or watch token, or a wrong or expired one
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


EXIT_HELP = (
    "exit status: 0 the task succeeded (or was queued, without --watch), 1 it failed, "
    "3 it was revoked, 4 no such task, 5 invalid id or parameters, 6 service unreachable, "
    "7 missing or wrong credentials, 2 usage error, 130 interrupted"
)


def outcome(status: dict[str, Any]) -> Exit:
    """The exit code for a task's final status."""
    if status["state"] == "SUCCESS":
        return Exit.SUCCESS
    return Exit.REVOKED if status["state"] == "REVOKED" else Exit.FAILURE


def error_exit(exc: TaskcastError) -> Exit:
    """The exit code for a client error."""
    if isinstance(exc, TaskNotFound | UnknownTaskName):
        return Exit.NOT_FOUND
    if isinstance(exc, InvalidTaskId | InvalidParams):
        return Exit.REJECTED
    if isinstance(exc, Unauthorized):
        return Exit.UNAUTHORIZED
    return Exit.UNAVAILABLE


def format_eta(progress: dict[str, Any] | None) -> str:
    """The task's time left as ``m:ss`` (``h:mm:ss`` past an hour), or ``-`` when unknown."""
    eta = (progress or {}).get("eta_s")
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta):
        return "-"
    minutes, seconds = divmod(math.ceil(max(eta, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


def _percent(progress: dict[str, Any] | None) -> str:
    percent = (progress or {}).get("percent")
    return f"{percent:.1f}%" if isinstance(percent, int | float) else ""


def status_line(status: dict[str, Any]) -> str:
    """One status as one line: ``PROGRESS  40.0%  2/5  ETA 0:03  message``."""
    parts = [f"{status['state']:<8}"]
    progress = status.get("progress")
    if progress:
        parts += [f"{_percent(progress):>6}", f"{progress['current']}/{progress['total']}"]
        if not status["final"]:
            parts.append(f"ETA {format_eta(progress)}")
        if progress.get("message"):
            parts.append(progress["message"])
    if status["error"]:
        parts.append(f"{status['error']['type']}: {status['error']['message']}")
    elif status["state"] == "SUCCESS":
        parts.append(f"result: {json.dumps(status['result'])}")
    return "  ".join(parts).rstrip()


def _bar_fields(status: dict[str, Any]) -> dict[str, Any]:
    progress = status.get("progress")
    percent = (progress or {}).get("percent")
    known = isinstance(percent, int | float)
    return {
        # No total makes rich draw a moving, indeterminate bar: queued or started.
        "total": 100.0 if known else None,
        "completed": percent if known else 0,
        "state": status["state"],
        "percent": _percent(progress),
        "eta": format_eta(progress),
        "message": (progress or {}).get("message") or "",
    }


async def show(statuses: AsyncIterator[dict[str, Any]], console: Console) -> dict[str, Any]:
    """Show each status as it comes and return the final one."""
    if not console.is_terminal:
        async for status in statuses:
            console.print(status_line(status), markup=False, highlight=False, soft_wrap=True)
            if status["final"]:
                return status
        raise TaskcastError("the status stream ended before the final status")
    # markup=False everywhere: a task's message is its own text, not rich markup.
    columns = (
        TextColumn("{task.fields[state]:<8}", markup=False),
        BarColumn(),
        TextColumn("{task.fields[percent]:>6}", markup=False),
        TextColumn("ETA {task.fields[eta]}", markup=False),
        TextColumn("{task.fields[message]}", markup=False),
    )
    with Progress(*columns, console=console) as bars:
        bar = bars.add_task("", total=None, state="", percent="", eta="-", message="")
        async for status in statuses:
            bars.update(bar, **_bar_fields(status))
            if status["final"]:
                break
        else:
            raise TaskcastError("the status stream ended before the final status")
    style = "green" if status["state"] == "SUCCESS" else "red"
    console.print(status_line(status), style=style, markup=False, highlight=False, soft_wrap=True)
    return status


async def watch_task(
    console: Console,
    base_url: str,
    task_id: str,
    give_up_after: float,
    token: str | None = None,
    api_key: str | None = None,
) -> Exit:
    """``taskcast watch``: show a task until it ends; its exit code."""
    # Asked once over REST first: a wrong URL or id fails at once, where the watch
    # itself would keep retrying for ``give_up_after`` seconds.
    await get_status(base_url, task_id, token=token, api_key=api_key)
    statuses = watch(base_url, task_id, token=token, api_key=api_key, give_up_after=give_up_after)
    return outcome(await show(statuses, console))


async def submit_task(
    console: Console,
    base_url: str,
    name: str,
    params: dict[str, Any],
    follow: bool,
    give_up_after: float,
    api_key: str | None = None,
) -> Exit:
    """``taskcast submit``: queue a task, print where to find it, and maybe follow it
    (with the watch token the service returned, if it signs them)."""
    links = await submit(base_url, name, params, api_key=api_key)
    console.print(
        f"{links['task_id']}\n  status  {links['status_url']}\n  live    {links['ws_url']}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if not follow:
        return Exit.SUCCESS
    statuses = watch(
        base_url,
        links["task_id"],
        token=links.get("token"),
        api_key=api_key,
        give_up_after=give_up_after,
    )
    return outcome(await show(statuses, console))


def run(command: Callable[[Console], Coroutine[Any, Any, Exit]]) -> int:
    """Run a command on a console for stdout; a client error is one line on stderr."""
    try:
        return asyncio.run(command(Console()))
    except TaskcastError as exc:
        print(f"taskcast: {exc}", file=sys.stderr)
        return error_exit(exc)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
