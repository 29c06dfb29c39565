"""Redis commands per second spent on watchers: taskcast's hub against the tutorial's polling.

One task reports progress once a second (the tutorial's pace), written by the driver
exactly as a worker's ``update_state`` writes it. Redis is private to this run, and its
own ``INFO commandstats`` counts every command in a window of fixed length:

- baseline: the writer alone;
- taskcast: W WebSocket clients watch the task (W = 1, 10, 100, 1,000);
- the tutorial's way: 1,000 clients each poll ``GET /task-status/{id}`` once a second,
  the endpoint reading ``AsyncResult`` (``bench.tutorial_app``).

The commands a server costs are the window's commands minus the baseline's.

    uv run python -m bench.redis_commands [--small] [--seconds 15]
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.clients import Pollers, Sockets
from bench.stack import Stack, machine, parser, table, write_progress

TOTAL = 1_000_000
# The driver's own INFO calls are not anyone's traffic.
_OWN = {"info"}


def commands(redis: Any) -> Counter[str]:
    """Calls per command so far, from Redis's own counters (the driver's INFO excluded)."""
    stats = redis.info("commandstats")
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name.removeprefix("cmdstat_") not in _OWN
        }
    )


class _Writer(threading.Thread):
    """Writes the task's progress once a second, as a worker would, until stopped."""

    def __init__(self, write: Callable[[int], None]) -> None:
        super().__init__(daemon=True)
        self.write = write
        self.stopped = threading.Event()

    def run(self) -> None:
        current = 0
        while not self.stopped.wait(1.0):
            current += 1
            self.write(current)


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--seconds", type=float, default=15.0)
    args = arguments.parse_args()
    seconds = 3.0 if args.small else args.seconds
    watchers = [10, 100] if args.small else [1, 10, 100, 1000]
    pollers = 100 if args.small else 1000

    with Stack() as stack:
        taskcast = stack.serve("taskcast", "taskcast")
        tutorial = stack.serve("tutorial", "bench.tutorial_app")

        from taskcast_celery.demo.celery import app as celery_app

        task_id = str(uuid.uuid4())
        redis = celery_app.backend.client

        def write(current: int) -> None:
            write_progress(task_id, current, TOTAL)

        write(0)
        writer = _Writer(write)
        writer.start()

        def window(run: Callable[[Callable[[], None]], None]) -> tuple[Counter[str], float]:
            """Commands counted while ``run`` runs; it calls its argument to start the clock."""
            marks: dict[str, Any] = {}

            def start() -> None:
                marks["before"], marks["started"] = commands(redis), time.monotonic()

            run(start)
            took = time.monotonic() - marks["started"]
            counted = commands(redis)
            counted.subtract(marks["before"])
            return counted, took

        def idle(start: Callable[[], None]) -> None:
            start()
            time.sleep(seconds)

        results: list[tuple[str, int, Counter[str], float, str]] = []
        counted, took = window(idle)
        baseline = sum(counted.values()) / took
        results.append(("writer alone (baseline)", 0, counted, took, ""))
        for w in watchers:
            url = taskcast.url(f"/ws/tasks/{task_id}", "ws")
            with Sockets([url] * w):
                counted, took = window(idle)
            results.append(("taskcast", w, counted, took, f"{w:,} WebSocket watchers"))
        path = f"/task-status/{task_id}"
        polling = Pollers(tutorial.address, [path] * pollers, period=1.0, duration=seconds)
        done: dict[str, tuple[int, int, float]] = {}

        def poll(start: Callable[[], None]) -> None:
            done["run"] = polling.run(on_start=start)

        counted, took = window(poll)
        requests, failed, _ = done["run"]
        if failed:
            raise SystemExit(f"{failed} of the tutorial's status requests failed")
        note = f"{pollers:,} pollers, {requests / took:,.0f} requests/s"
        results.append(("tutorial (AsyncResult polling)", pollers, counted, took, note))
        writer.stopped.set()
        writer.join()

    rows = []
    rates: dict[str, float] = {}
    for name, w, counted, took, note in results:
        total = sum(counted.values()) / took
        spent = max(total - baseline, 0.0) if w else total
        top = ", ".join(f"{cmd} {n / took:,.1f}" for cmd, n in counted.most_common(4) if n)
        rates[f"{name}/{w}"] = spent
        rows.append([name, f"{w:,}", f"{total:,.1f}", f"{spent:,.1f}", top, note])
    tutorial_rate = rates[f"tutorial (AsyncResult polling)/{pollers}"]
    same = f"taskcast/{pollers}"
    print(f"Redis commands per second, {seconds:g} s windows ({machine()})")
    headers = ["server", "watchers", "commands/s", "minus baseline", "by command, /s", "notes"]
    print(table(headers, rows))
    if same in rates and rates[same] > 0:
        print(f"\ntutorial / taskcast at {pollers:,} watchers: {tutorial_rate / rates[same]:,.0f}x")


if __name__ == "__main__":
    main()
