"""An owner's history: Redis memory per listed task, and how long ``GET
/feeds/{owner}/tasks`` takes with 100,000 tasks of one owner listed.

The entries are written as a producer writes them (``record_sent`` inside
``taskcast.owned_by``: the backend's own script), one task in ten then ended SUCCESS with
a small result as a worker ends it (``store_result``), and one in 2,000 tagged ``rare``.
Memory is Redis's own ``MEMORY USAGE`` of a history entry (queued, and ended with its
result) and of the owner's list and finished set divided by their members. Latency is
one keep-alive client asking one service process, one request at a time: the first page,
a deep page (a cursor 90% of the way down), and a page filtered by the rare tag (which
looks at 1,000 entries at most, and answers with what it found and a cursor).

    uv run python -m bench.history [--tasks 100000] [--requests 200]
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import httpx

from bench.stack import Stack, machine, parser, percentile, table

OWNER = "user:bench"
SUCCESS_EVERY = 10
RARE_EVERY = 2000


def fill(tasks: int) -> dict[str, Any]:
    """Write ``tasks`` history entries for ``OWNER``; what was written, for the figures.

    Imported here: the demo app reads the Stack's Redis from the environment."""
    import taskcast
    from taskcast_celery.demo.celery import app

    backend = app.backend
    finished: list[str] = []
    queued: list[str] = []
    for index in range(tasks):
        task_id = str(uuid.uuid4())
        tags = ("report", "rare") if index % RARE_EVERY == 0 else ("report",)
        with taskcast.owned_by(OWNER, tags=tags) as ownership:
            backend.record_sent(task_id, "taskcast.progress", ownership)
        if index % SUCCESS_EVERY == 0:
            backend.store_result(task_id, {"status": "completed", "rows": index}, "SUCCESS")
            finished.append(task_id)
        else:
            queued.append(task_id)
    return {"finished": finished, "queued": queued, "client": backend.client}


def memory(written: dict[str, Any], tasks: int) -> list[list[Any]]:
    """Bytes per listed task, by Redis's MEMORY USAGE."""
    from taskcast_celery import keys

    client = written["client"]
    usage = lambda key: int(client.memory_usage(key, samples=0) or 0)  # noqa: E731
    queued_entry = usage(keys.history_key("", written["queued"][0]))
    done_entry = usage(keys.history_key("", written["finished"][0]))
    listing = usage(keys.owner_tasks_key("", OWNER)) / tasks
    done_set = usage(keys.owner_done_key("", OWNER)) / max(1, len(written["finished"]))
    active_set = usage(keys.owner_active_key("", OWNER)) / max(1, len(written["queued"]))
    return [
        ["history entry, queued (SENT)", queued_entry],
        ["history entry, ended SUCCESS with a 40-byte result", done_entry],
        ["owner's list (sorted set), per task", f"{listing:.0f}"],
        ["owner's unfinished set, per unfinished task", f"{active_set:.0f}"],
        ["owner's finished set, per finished task", f"{done_set:.0f}"],
        [
            "**a listed task, ended** (entry + list + finished set)",
            f"**{done_entry + listing + done_set:.0f}**",
        ],
    ]


def timed(http: httpx.Client, path: str, params: dict[str, Any], requests: int) -> list[float]:
    """Milliseconds each of ``requests`` GETs took (after a few not counted)."""
    for _ in range(5):
        http.get(path, params=params).raise_for_status()
    took = []
    for _ in range(requests):
        started = time.perf_counter()
        response = http.get(path, params=params)
        took.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return took


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--tasks", type=int, default=100_000)
    arguments.add_argument("--requests", type=int, default=200)
    args = arguments.parse_args()
    tasks, requests = (5_000, 20) if args.small else (args.tasks, args.requests)
    with Stack() as stack:
        server = stack.serve("taskcast", "taskcast")
        began = time.perf_counter()
        written = fill(tasks)
        filling = time.perf_counter() - began
        from taskcast.history import encode_cursor
        from taskcast_celery import keys

        client = written["client"]
        deep_member = client.zrange(
            keys.owner_tasks_key("", OWNER), tasks * 9 // 10, tasks * 9 // 10
        )
        deep = encode_cursor(deep_member[0].decode())
        path = f"/feeds/{OWNER}/tasks"
        cases = {
            "first page (50)": {},
            "first page (200)": {"limit": 200},
            "deep page (200), cursor at 90%": {"limit": 200, "cursor": deep},
            "state=SUCCESS (50)": {"state": "SUCCESS"},
            "tag=rare (50): 1 in 2,000 matches": {"tag": "rare"},
        }
        rows = []
        with httpx.Client(base_url=server.url(""), timeout=30) as http:
            for label, params in cases.items():
                took = timed(http, path, params, requests)
                page = http.get(path, params=params).json()
                rows.append(
                    [
                        label,
                        f"{statistics.median(took):.1f}",
                        f"{percentile(took, 99):.1f}",
                        len(page["tasks"]),
                        "yes" if page["next_cursor"] else "no",
                    ]
                )
        figures = memory(written, tasks)
    print(
        f"{tasks:,} tasks of one owner in history (written in {filling:.1f} s), one service "
        f"process, one client, {requests} requests each; {machine()}\n"
    )
    print(table(["request", "p50 ms", "p99 ms", "tasks on the page", "next_cursor"], rows))
    print()
    print(table(["Redis memory (MEMORY USAGE)", "bytes"], figures))


if __name__ == "__main__":
    main()
