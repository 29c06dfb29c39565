"""Fan-out: one task's change delivered to N subscribers, against the stack's ceiling.

N clients (in two processes of their own) watch one task on ``/ws/tasks/{id}``; the
driver writes a progress state as a worker would, and times how long until the last
client has the new frame. The ceiling is ``bench.ceiling``: a bare Starlette endpoint
on the same uvicorn settings that sends the same pre-encoded frame to the same number
of clients in a plain loop. Both run in the same run, each size in alternating order.

The same again over Server-Sent Events: N streams on ``/sse/tasks/{id}`` (each an
HTTP/1.1 GET whose events the client parses, counting ``status`` events as the
WebSocket clients count frames), against the ceiling's bare streaming endpoint; each
taskcast SSE row also reads as a ratio to taskcast's WebSocket row of the same size.

And over celery-progress's WebSocket (``/ws/progress/{id}/``, each client sending its
``check_task_completion`` once): every socket is sent celery-progress's object, made
once per change for all of them; its rows read as a ratio to the WebSocket row too.

    uv run python -m bench.fanout [--small] [--sizes 1000 5000 10000] [--rounds 10]
        [--transports websocket sse celery-progress]
"""

from __future__ import annotations

import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable

from bench.clients import Sockets
from bench.stack import Stack, machine, parser, table, write_progress

TOTAL = 1_000_000


Change = Callable[[int], Callable[[], object]]


def _rounds(
    urls: list[str], rounds: int, prepare: Change, sends: tuple[str, ...] = ()
) -> list[float]:
    """Seconds from each change to its last receipt."""
    spans = []
    with Sockets(urls, processes=2, sends=sends) as sockets:
        for r in range(1, rounds + 1):
            change = prepare(r)
            started = time.time()
            change()
            # Frame 1 was the greeting or snapshot; change r is frame r + 1.
            _, last = sockets.frame(r + 1)
            spans.append(last - started)
    return spans


TRANSPORTS = {"websocket": "WebSocket", "sse": "SSE", "celery-progress": "celery-progress"}
# What a celery-progress client sends once connected (the ceiling ignores it).
_CHECK = ('{"type": "check_task_completion"}',)


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    arguments.add_argument("--rounds", type=int, default=10)
    arguments.add_argument(
        "--transports", nargs="+", choices=list(TRANSPORTS), default=list(TRANSPORTS)
    )
    args = arguments.parse_args()
    sizes, rounds = ([200, 1000], 3) if args.small else (args.sizes, args.rounds)
    transports = [TRANSPORTS[name] for name in TRANSPORTS if name in args.transports]

    with Stack() as stack:
        taskcast = stack.serve("taskcast", "taskcast")
        ceiling = stack.serve("ceiling", "bench.ceiling")

        from taskcast.live.protocol import status_update
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

        def to_ceiling(path: str) -> Change:
            def prepare(r: int) -> Callable[[], object]:
                # The frame taskcast sends for this change, encoded before the clock starts.
                raw = write(r)
                frame = status_update(decode_status(task_id, raw), raw).text.encode()
                request = urllib.request.Request(ceiling.url(path), data=frame)
                return lambda: urllib.request.urlopen(request).close()

            return prepare

        write(0)
        # (server, transport) -> where its clients connect, and how a change is made.
        targets: dict[tuple[str, str], tuple[str, Change]] = {
            ("ceiling", "celery-progress"): (ceiling.url("/ws", "ws"), to_ceiling("/broadcast")),
            ("taskcast", "celery-progress"): (
                taskcast.url(f"/ws/progress/{task_id}/", "ws"),
                to_taskcast,
            ),
            ("ceiling", "WebSocket"): (ceiling.url("/ws", "ws"), to_ceiling("/broadcast")),
            ("taskcast", "WebSocket"): (
                taskcast.url(f"/ws/tasks/{task_id}", "ws"),
                to_taskcast,
            ),
            ("taskcast", "SSE"): (taskcast.url(f"/sse/tasks/{task_id}"), to_taskcast),
            ("ceiling", "SSE"): (ceiling.url("/sse"), to_ceiling("/sse/broadcast")),
        }
        scenarios = [target for target in targets if target[1] in transports]
        rows = []
        for i, size in enumerate(sizes):
            # Each size in the other order: the two taskcast rows stay side by side.
            order = scenarios if i % 2 == 0 else scenarios[::-1]
            rates: dict[tuple[str, str], float] = {}
            results: dict[tuple[str, str], list[float]] = {}
            for target in order:
                url, change = targets[target]
                sends = _CHECK if target[1] == "celery-progress" else ()
                results[target] = _rounds([url] * size, rounds, change, sends)
                rates[target] = size * rounds / sum(results[target])
            for transport in transports:
                for name in ("ceiling", "taskcast"):
                    spans = results[name, transport]
                    rate = rates[name, transport]
                    # Over SSE and celery-progress, the same server's rate as a fraction
                    # of its WebSocket rate.
                    websocket = rates.get((name, "WebSocket"))
                    versus = ""
                    if transport != "WebSocket" and websocket is not None:
                        versus = f"{rate / websocket:.2f}"
                    rows.append(
                        [
                            f"{size:,}",
                            transport,
                            name,
                            f"{rate:,.0f}",
                            f"{statistics.median(spans) * 1000:.1f}",
                            f"{max(spans) * 1000:.1f}",
                            f"{rate / rates['ceiling', transport]:.2f}",
                            versus,
                        ]
                    )
    print(f"fan-out, {rounds} changes per size ({machine()})")
    headers = [
        "subscribers",
        "transport",
        "server",
        "messages/s",
        "change -> last receipt, median ms",
        "max ms",
        "x ceiling",
        "/ WebSocket",
    ]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
