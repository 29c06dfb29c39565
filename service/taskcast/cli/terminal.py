"""What ``taskcast watch``, ``taskcast submit``, ``taskcast submit-group`` and
``taskcast feed`` show in a terminal, and their exit codes.

On a terminal a task or a group is a live progress bar (state, bar, percent, ETA, then
the task's message or how many of the group's members are done). When the output is not
a terminal (a pipe, a file, CI), every change that shows is one plain line, because
redrawing a bar there would leave escape codes or a single final frame. A running task
whose worker has gone silent (the status's ``stalled``) shows STALLED where its ETA would
be, until it is heard from again; so does a group with such a member. An owner's feed
is many tasks at once: one plain line per status, each naming its task, terminal or not.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from taskcast.client import (
    Forbidden,
    GroupNotFound,
    InvalidGroupId,
    InvalidOwner,
    InvalidParams,
    InvalidTaskId,
    TaskcastError,
    TaskNotFound,
    Unauthorized,
    UnknownTaskName,
    get_group,
    get_history,
    get_status,
    submit,
    submit_group,
    watch,
    watch_feed,
    watch_group,
)
from taskcast.client import (
    list_tasks as exposed_tasks,
)


class Exit(IntEnum):
    """Exit codes of ``watch``, ``submit`` and ``submit-group``; 2 stays argparse's, for a
    wrong command line."""

    SUCCESS = 0  # the task (a group: every member) succeeded, or without --watch was queued
    FAILURE = 1  # the task ended FAILURE, or a member of the group did
    REVOKED = 3  # the task was cancelled; a group: members were, and none failed
    NOT_FOUND = 4  # no task or group with that id, or no task of that name
    REJECTED = 5  # a malformed id, or parameters the task refuses
    UNAVAILABLE = 6  # the service could not be reached, or answered unexpectedly
    UNAUTHORIZED = 7  # no API key or watch token, or a wrong or expired one
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


EXIT_HELP = (
    "exit status: 0 the task (a group: every member) succeeded (or was queued, without "
    "--watch), 1 it (a group: any member) failed, 3 it was revoked (a group: members were, "
    "none failed), 4 no such task or group, 5 invalid id or parameters, 6 service "
    "unreachable, 7 missing or wrong credentials, 2 usage error, 130 interrupted"
)


def outcome(status: dict[str, Any]) -> Exit:
    """The exit code for a task's or a group's final status."""
    if status["state"] == "SUCCESS":
        return Exit.SUCCESS
    return Exit.REVOKED if status["state"] == "REVOKED" else Exit.FAILURE


def error_exit(exc: TaskcastError) -> Exit:
    """The exit code for a client error."""
    if isinstance(exc, TaskNotFound | GroupNotFound | UnknownTaskName):
        return Exit.NOT_FOUND
    if isinstance(exc, InvalidTaskId | InvalidGroupId | InvalidParams | InvalidOwner):
        return Exit.REJECTED
    if isinstance(exc, Unauthorized | Forbidden):
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


# What a state without progress means, said in the line (a bare "SENT" says little).
_WAITING = {
    "SENT": "queued: waiting for a worker",
    "PENDING": "queued: waiting for a worker",
    "RECEIVED": "taken by a worker",
    "STARTED": "running",
    "RETRY": "failed for now: will be tried again",
}


def worth_a_line(status: dict[str, Any]) -> bool:
    """Whether a change deserves its own line: not a task's last step at 100 percent,
    which its final line, coming next, says again."""
    progress = status.get("progress") or {}
    return bool(status["final"] or status.get("stalled") or progress.get("percent") != 100)


def status_line(status: dict[str, Any]) -> str:
    """One status as one line: ``PROGRESS  40.0%  2/5  ETA 0:03  message``; a stalled task
    says ``STALLED: no heartbeat from its worker`` in place of its ETA."""
    parts = [f"{status['state']:<8}"]
    progress = status.get("progress")
    # Read with get: a service older than the field does not send it.
    stalled = status.get("stalled")
    if progress:
        parts += [f"{_percent(progress):>6}", f"{progress['current']}/{progress['total']}"]
        if not status["final"] and not stalled:
            parts.append(f"ETA {format_eta(progress)}")
    if stalled:
        parts.append("STALLED: no heartbeat from its worker")
    elif not progress and status["state"] in _WAITING:
        parts.append(_WAITING[status["state"]])
    if progress and progress.get("message"):
        parts.append(progress["message"])
    if status["error"]:
        parts.append(f"{status['error']['type']}: {status['error']['message']}")
    elif status["state"] == "SUCCESS":
        parts.append(f"result: {json.dumps(status['result'])}")
    return "  ".join(parts).rstrip()


def _tally(group: dict[str, Any]) -> str:
    """``3/5 done  1 failed``; cancelled members are counted apart: ``0 failed  2 revoked``."""
    # From the counts: while the group runs, its failures list holds only the first few.
    states = group["states"]
    revoked = states.get("REVOKED", 0)
    failed = states.get("FAILURE", 0) + states.get("UNKNOWN", 0)
    parts = [f"{group['done']}/{group['size']} done", f"{failed} failed"]
    if revoked:
        parts.append(f"{revoked} revoked")
    return "  ".join(parts)


def group_line(group: dict[str, Any]) -> str:
    """One group status as one line: ``PROGRESS   40.0%  2/5 done  0 failed  ETA 0:03``;
    while members are stalled, ``STALLED: 1 task without a worker heartbeat`` in place of
    the ETA."""
    parts = [f"{group['state']:<8}", f"{_percent(group['progress']):>6}", _tally(group)]
    if group["stalled"]:
        count = len(group["stalled_tasks"])
        parts.append(f"STALLED: {count} task{'' if count == 1 else 's'} without a worker heartbeat")
    elif not group["final"]:
        parts.append(f"ETA {format_eta(group['progress'])}")
    return "  ".join(parts)


def group_summary(group: dict[str, Any]) -> str:
    """The group's last line, then one line for each member that failed or was cancelled:
    ``  TASK_ID  FAILURE   RuntimeError: failed at step 1 of 3``."""
    lines = [group_line(group)]
    for failure in group["failures"]:
        error = failure["error"]
        line = f"  {failure['task_id']}  {failure['state']:<8}  {error['type']}: {error['message']}"
        lines.append(line.rstrip())
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class View:
    """How one kind of status object is shown: a task's, or a group's."""

    line: Callable[[dict[str, Any]], str]  # a change, as one plain line
    note: Callable[[dict[str, Any]], str]  # on a terminal, the text after the bar's ETA
    summary: Callable[[dict[str, Any]], str]  # the final status, printed last


def _message(status: dict[str, Any]) -> str:
    """The task's own progress message, if it wrote one."""
    return str((status.get("progress") or {}).get("message") or "")


TASK = View(status_line, _message, status_line)
GROUP = View(group_line, _tally, group_summary)


def _bar_fields(status: dict[str, Any], note: str) -> dict[str, Any]:
    progress = status.get("progress")
    percent = (progress or {}).get("percent")
    known = isinstance(percent, int | float)
    return {
        # No total makes rich draw a moving, indeterminate bar: queued or started.
        "total": 100.0 if known else None,
        "completed": percent if known else 0,
        "state": status["state"],
        "percent": _percent(progress),
        # Stalled, the ETA is unknown anyway (the service sends none): its place says why.
        "eta": "[bold red]STALLED[/]" if status.get("stalled") else f"ETA {format_eta(progress)}",
        "note": note,
    }


def _say(console: Console, text: str, style: str | None = None) -> None:
    # markup=False: a task's message and error are its own text, not rich markup.
    console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


async def show(
    statuses: AsyncIterator[dict[str, Any]], console: Console, view: View = TASK
) -> dict[str, Any]:
    """Show each status as it comes and return the final one."""
    if not console.is_terminal:
        said = ""
        async for status in statuses:
            if view is TASK and not worth_a_line(status):
                continue
            line = view.summary(status) if status["final"] else view.line(status)
            # A change the line does not show (a group's member going from queued to
            # started, a rate) would repeat the line before: one is enough.
            if line != said:
                _say(console, line)
                said = line
            if status["final"]:
                return status
        raise TaskcastError("the status stream ended before the final status")
    columns = (
        TextColumn("{task.fields[state]:<8}", markup=False),
        BarColumn(),
        TextColumn("{task.fields[percent]:>6}", markup=False),
        # Markup here only: the ETA field is this module's own text, never the task's.
        TextColumn("{task.fields[eta]}"),
        TextColumn("{task.fields[note]}", markup=False),
    )
    with Progress(*columns, console=console) as bars:
        bar = bars.add_task("", total=None, state="", percent="", eta="ETA -", note="")
        async for status in statuses:
            bars.update(bar, **_bar_fields(status, view.note(status)))
            if status["final"]:
                break
        else:
            raise TaskcastError("the status stream ended before the final status")
    _say(console, view.summary(status), style="green" if status["state"] == "SUCCESS" else "red")
    return status


async def _follow(
    console: Console,
    base_url: str,
    watched_id: str,
    give_up_after: float,
    token: str | None,
    api_key: str | None,
    group: bool,
) -> Exit:
    """Show a task, or a group, until it ends; its exit code."""
    follow, view = (watch_group, GROUP) if group else (watch, TASK)
    statuses = follow(
        base_url, watched_id, token=token, api_key=api_key, give_up_after=give_up_after
    )
    return outcome(await show(statuses, console, view))


async def watch_task(
    console: Console,
    base_url: str,
    watched_id: str,
    give_up_after: float,
    token: str | None = None,
    api_key: str | None = None,
    group: bool = False,
) -> Exit:
    """``taskcast watch`` (``--group``: the id is a group's): show a task, or a group,
    until it ends; its exit code."""
    # Asked once over REST first: a wrong URL or id fails at once, where the watch
    # itself would keep retrying for ``give_up_after`` seconds.
    read = get_group if group else get_status
    await read(base_url, watched_id, token=token, api_key=api_key)
    return await _follow(console, base_url, watched_id, give_up_after, token, api_key, group)


async def list_tasks(console: Console, base_url: str) -> Exit:
    """``taskcast tasks``: one line per task the service exposes, with what it does."""
    tasks = await exposed_tasks(base_url)
    if not tasks:
        _say(console, "the service exposes no task")
    width = max((len(str(task["name"])) for task in tasks), default=0)
    for task in tasks:
        _say(console, f"{task['name']:<{width}}  {task.get('summary') or ''}".rstrip())
    return Exit.SUCCESS


def _print_links(console: Console, watched_id: str, links: dict[str, Any], *more: str) -> None:
    lines = [watched_id, f"  status  {links['status_url']}", f"  live    {links['ws_url']}"]
    _say(console, "\n".join([*lines, *more]))


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
    _print_links(console, links["task_id"], links)
    if not follow:
        return Exit.SUCCESS
    task_id, token = links["task_id"], links.get("token")
    return await _follow(console, base_url, task_id, give_up_after, token, api_key, group=False)


async def submit_task_group(
    console: Console,
    base_url: str,
    name: str,
    count: int,
    params: dict[str, Any],
    follow: bool,
    give_up_after: float,
    api_key: str | None = None,
) -> Exit:
    """``taskcast submit-group``: queue ``count`` copies of a task as one group, print
    where to find it and its members' ids, and maybe follow it (with the group's watch
    token, if the service signs them)."""
    links = await submit_group(base_url, name, count=count, params=params, api_key=api_key)
    group_id, token = links["group_id"], links.get("token")
    _print_links(console, group_id, links, f"  tasks   {' '.join(links['task_ids'])}")
    if not follow:
        return Exit.SUCCESS
    return await _follow(console, base_url, group_id, give_up_after, token, api_key, group=True)


# Names of an owner's tasks a feed has learnt from its history, read again (one page) when
# a task it does not know shows up; the newest this many tasks are asked for.
_NAMES_PAGE = 50


def feed_line(status: dict[str, Any], name: str | None) -> str:
    """One status of an owner's feed as one line: the task's id (short), its name when
    known, then what ``status_line`` says: ``1f0c9e2a  taskcast.progress  PROGRESS  40.0% ...``."""
    return f"{str(status['task_id'])[:8]}  {name or '-'}  {status_line(status)}".rstrip()


async def follow_feed(
    console: Console,
    base_url: str,
    owner: str,
    give_up_after: float,
    token: str | None = None,
    api_key: str | None = None,
) -> Exit:
    """``taskcast feed OWNER``: one line per status of any task of the owner, live, until
    interrupted (a feed has no end)."""

    async def learn_names() -> None:
        page = await get_history(base_url, owner, limit=_NAMES_PAGE, token=token, api_key=api_key)
        names.update({task["task_id"]: task["name"] for task in page["tasks"]})

    names: dict[str, str | None] = {}
    # Asked once over REST first: a wrong URL, owner or token fails at once, where the
    # feed itself would keep retrying for ``give_up_after`` seconds; and it names tasks.
    await learn_names()
    statuses = watch_feed(
        base_url, owner, token=token, api_key=api_key, give_up_after=give_up_after
    )
    async for status in statuses:
        task_id = str(status["task_id"])
        if task_id not in names:
            # A task newer than the names known: it is on the history's first page.
            await learn_names()
            names.setdefault(task_id, None)
        if worth_a_line(status):
            _say(console, feed_line(status, names[task_id]))
    raise TaskcastError("the feed ended")


def _when(ms: int | None) -> str:
    """A time of the history (Unix ms) as UTC, to the second."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def history_line(task: dict[str, Any]) -> str:
    """One task of an owner's history: id, sent (UTC), name, state, then its error or
    result: ``1f0c9e2a  2026-01-02 10:00:00  taskcast.progress  SUCCESS   result: 3``."""
    parts = [task["task_id"], _when(task["sent_at"]), task["name"] or "-", f"{task['state']:<8}"]
    if task["error"]:
        parts.append(f"{task['error']['type']}: {task['error']['message']}")
    elif task["state"] == "SUCCESS":
        parts.append(f"result: {json.dumps(task['result'])}")
    return "  ".join(parts).rstrip()


async def list_feed(
    console: Console,
    base_url: str,
    owner: str,
    token: str | None = None,
    api_key: str | None = None,
    **query: Any,
) -> Exit:
    """``taskcast feed OWNER --list``: a page of the owner's history, newest first, one
    line per task; then the cursor of the next page, when there is one."""
    page = await get_history(base_url, owner, token=token, api_key=api_key, **query)
    if not page["tasks"]:
        _say(console, f"no task of {owner} is listed" + (" here" if query.get("cursor") else ""))
    for task in page["tasks"]:
        _say(console, history_line(task))
    if page.get("next_cursor"):
        _say(console, f"next page: --cursor {page['next_cursor']}")
    return Exit.SUCCESS


def run(command: Callable[[Console], Coroutine[Any, Any, Exit]]) -> int:
    """Run a command on a console for stdout; a client error is one line on stderr."""
    try:
        return asyncio.run(command(Console()))
    except TaskcastError as exc:
        print(f"taskcast: {exc}", file=sys.stderr)
        return error_exit(exc)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
