"""Fan-out: one task's change delivered to N subscribers, against the stack's ceiling.

N clients (in two processes of their own) watch one task on ``/ws/tasks/{id}``; the
driver writes a progress state as a worker would, and times how long until the last
client has the new frame. The ceiling is ``bench.ceiling``: a bare Starlette endpoint
on the same uvicorn settings that sends the same pre-encoded frame to the same number
of clients in a plain loop. Both run in the same run, each size in alternating order.

    uv run python -m bench.fanout [--small] [--sizes 1000 5000 10000] [--rounds 10]
"""

from __future__ import annotations

import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable

from bench.clients import Sockets
from bench.stack import Server, Stack, machine, parser, table, write_progress

TOTAL = 1_000_000


Change = Callable[[int], Callable[[], object]]


def _rounds(urls: list[str], rounds: int, prepare: Change) -> list[float]:
    """Seconds from each change to its last receipt."""
    spans = []
    with Sockets(urls, processes=2) as sockets:
        for r in range(1, rounds + 1):
            change = prepare(r)
            started = time.time()
            change()
            # Frame 1 was the greeting or snapshot; change r is frame r + 1.
            _, last = sockets.frame(r + 1)
            spans.append(last - started)
    return spans


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    arguments.add_argument("--rounds", type=int, default=10)
    args = arguments.parse_args()
    sizes, rounds = ([200, 1000], 3) if args.small else (args.sizes, args.rounds)

    with Stack() as stack:
        taskcast = stack.serve("taskcast", "taskcast")
        ceiling = stack.serve("ceiling", "bench.ceiling")

        from taskcast.live.protocol import status_message
        from taskcast.status import decode_status
        from taskcast_celery.demo.celery import app as celery_app

        task_id = str(uuid.uuid4())
        key = celery_app.backend.get_key_for_task(task_id)

        def write(r: int) -> bytes:
            """Write change ``r``; the record as stored, to build the ceiling's frame."""
            write_progress(task_id, r, TOTAL)
            raw: bytes = celery_app.backend.client.get(key)
            return raw

        def to_taskcast(r: int) -> Callable[[], object]:
            # Only the write is timed, as a worker's update_state would make it.
            return lambda: write_progress(task_id, r, TOTAL)

        def to_ceiling(r: int) -> Callable[[], object]:
            # The frame taskcast sends for this change, encoded before the clock starts.
            frame = status_message(decode_status(task_id, write(r))).encode()
            request = urllib.request.Request(ceiling.url("/broadcast"), data=frame)
            return lambda: urllib.request.urlopen(request).close()

        write(0)
        targets: dict[str, tuple[Server, str, Change]] = {
            "ceiling": (ceiling, "/ws", to_ceiling),
            "taskcast": (taskcast, f"/ws/tasks/{task_id}", to_taskcast),
        }
        rows = []
        for i, size in enumerate(sizes):
            order = ["ceiling", "taskcast"] if i % 2 == 0 else ["taskcast", "ceiling"]
            results: dict[str, list[float]] = {}
            for name in order:
                server, path, change = targets[name]
                results[name] = _rounds([server.url(path, "ws")] * size, rounds, change)
            for name in ("ceiling", "taskcast"):
                spans = results[name]
                rate = size * len(spans) / sum(spans)
                ceiling_rate = size * rounds / sum(results["ceiling"])
                rows.append(
                    [
                        f"{size:,}",
                        name,
                        f"{rate:,.0f}",
                        f"{statistics.median(spans) * 1000:.1f}",
                        f"{max(spans) * 1000:.1f}",
                        f"{rate / ceiling_rate:.2f}",
                    ]
                )
    print(f"fan-out, {rounds} changes per size ({machine()})")
    headers = [
        "subscribers",
        "server",
        "messages/s",
        "change -> last receipt, median ms",
        "max ms",
        "x ceiling",
    ]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
