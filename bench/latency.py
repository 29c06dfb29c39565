"""Latency from ``update_state`` in a worker to its receipt at a WebSocket client.

A real worker runs ``bench.stamp``, which writes progress states stamped with the
wall-clock time of each write; one client watches the task on ``/ws/tasks/{id}`` and
subtracts the stamp from its own clock on receipt (same machine, same clock). Two
taskcast servers run side by side on one Redis: push mode, and poll-only mode. In poll
mode stamps are spaced wider than the poll interval, so each one is seen by a poll.

    uv run python -m bench.latency [--small]
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import websockets.asyncio.client

from bench.stack import Server, Stack, machine, parser, percentile, table

POLL_INTERVAL = 0.5


async def _watch(server: Server, task_id: str, within: float) -> tuple[list[float], int]:
    """Latencies (seconds) of the stamped progress frames; and the frames received."""
    latencies: list[float] = []
    frames = 0
    url = server.url(f"/ws/tasks/{task_id}", scheme="ws")
    async with (
        asyncio.timeout(within),
        websockets.asyncio.client.connect(url, compression=None) as ws,
    ):
        async for raw in ws:
            received = time.time()
            frames += 1
            status: dict[str, Any] = json.loads(raw)
            progress = status.get("progress") or {}
            # The first frame is the snapshot taken on subscribe, not a fresh change.
            if frames > 1 and status.get("state") == "PROGRESS" and progress.get("message"):
                latencies.append(received - float(progress["message"]))
    return latencies, frames


def _measure(server: Server, count: int, gap: tuple[float, float]) -> tuple[list[float], int]:
    from taskcast_celery.demo.celery import app as celery_app

    kwargs = {"count": count, "gap_min": gap[0], "gap_max": gap[1], "lead": 1.0}
    task_id = celery_app.send_task("bench.stamp", kwargs=kwargs).id
    within = 60 + count * gap[1]
    return asyncio.run(_watch(server, task_id, within))


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    push_count, poll_count = (40, 6) if args.small else (500, 80)
    with Stack() as stack:
        stack.worker("--concurrency", "1")
        push = stack.serve("taskcast-push", "taskcast", TASKCAST_PUSH="true")
        poll = stack.serve(
            "taskcast-poll",
            "taskcast",
            TASKCAST_PUSH="false",
            TASKCAST_POLL_INTERVAL=str(POLL_INTERVAL),
        )
        runs = [
            ("push", push, push_count, (0.005, 0.02), "p50 <= 2 ms, p99 <= 10 ms"),
            (
                f"poll only ({POLL_INTERVAL:g} s)",
                poll,
                poll_count,
                (POLL_INTERVAL * 1.05, POLL_INTERVAL * 1.6),
                f"p99 <= {POLL_INTERVAL * 1000 + 20:.0f} ms",
            ),
        ]
        rows = []
        for mode, server, count, gap, target in runs:
            latencies, _ = _measure(server, count, gap)
            if not latencies:
                raise SystemExit(f"{mode}: no stamped frame arrived")
            ms = [value * 1000 for value in latencies]
            rows.append(
                [
                    mode,
                    count,
                    len(ms),
                    f"{percentile(ms, 50):.2f}",
                    f"{percentile(ms, 99):.2f}",
                    f"{max(ms):.2f}",
                    target,
                ]
            )
    print(f"latency, update_state -> client ({machine()})")
    headers = ["mode", "states written", "frames timed", "p50 ms", "p99 ms", "max ms", "target"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
