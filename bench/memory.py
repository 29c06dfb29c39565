"""Server memory per idle subscriber: the RSS a server process grows by, divided by N.

Each scenario gets a fresh server process: it is warmed up with a few connections,
its RSS is read, then N clients (in processes of their own) connect and subscribe,
and once every one has its snapshot the RSS is read again. The bare Starlette
endpoint of ``bench.ceiling`` shows what an idle WebSocket costs this stack at all.

Each scenario runs over WebSocket and again over Server-Sent Events (the same task on
``/sse/tasks/{id}``, against the ceiling's bare streaming endpoint): the memory of an
idle event stream, as a ratio to an idle WebSocket's.

    uv run python -m bench.memory [--small] [--subscribers 10000] [--transports websocket sse]
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from bench.clients import Sockets
from bench.stack import Server, Stack, machine, parser, table

WARM_UP = 50
TARGET_KIB = 30


def _grows_by(server: Server, urls: list[str]) -> int:
    """RSS growth, in bytes, of ``server`` while ``urls`` are connected."""
    with Sockets(urls[:WARM_UP]):
        pass
    before = server.rss()
    with Sockets(urls):
        after = server.rss()
    return after - before


TRANSPORTS = {"websocket": "WebSocket", "sse": "SSE"}


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--subscribers", type=int, default=10_000)
    arguments.add_argument(
        "--transports", nargs="+", choices=list(TRANSPORTS), default=list(TRANSPORTS)
    )
    args = arguments.parse_args()
    n = 500 if args.small else args.subscribers
    transports = [TRANSPORTS[name] for name in TRANSPORTS if name in args.transports]

    with Stack() as stack:
        from taskcast_celery.demo.celery import app as celery_app

        # Tasks that exist (recorded as SENT) and stay idle for the whole run.
        task_ids = [str(uuid.uuid4()) for _ in range(n)]
        for task_id in task_ids:
            celery_app.backend.record_sent(task_id, None)

        # A server, and the URL of client i on each transport.
        scenarios: list[tuple[str, str, Callable[[Server, int], dict[str, str]]]] = [
            (
                "ceiling (bare Starlette)",
                "bench.ceiling",
                lambda server, i: {
                    "WebSocket": server.url("/ws", "ws"),
                    "SSE": server.url("/sse"),
                },
            ),
            (
                "taskcast, all on one task",
                "taskcast",
                lambda server, i: {
                    "WebSocket": server.url(f"/ws/tasks/{task_ids[0]}", "ws"),
                    "SSE": server.url(f"/sse/tasks/{task_ids[0]}"),
                },
            ),
            (
                "taskcast, one task each",
                "taskcast",
                lambda server, i: {
                    "WebSocket": server.url(f"/ws/tasks/{task_ids[i]}", "ws"),
                    "SSE": server.url(f"/sse/tasks/{task_ids[i]}"),
                },
            ),
        ]
        rows = []
        for name, module, urls in scenarios:
            per: dict[str, float] = {}
            for transport in transports:
                # A fresh process for each: nothing left over from the other transport.
                server = stack.serve(f"server-{len(rows)}", module)
                grown = _grows_by(server, [urls(server, j)[transport] for j in range(n)])
                per[transport] = grown / n / 1024
                versus = ""
                if transport == "SSE" and "WebSocket" in per:
                    versus = f"{per[transport] / per['WebSocket']:.2f}"
                row = [name, transport, f"{n:,}", f"{grown / 2**20:.1f}", f"{per[transport]:.1f}"]
                rows.append([*row, versus])
    print(f"memory per idle subscriber ({machine()}); target <= {TARGET_KIB} KiB for taskcast")
    headers = [
        "server",
        "transport",
        "subscribers",
        "RSS growth MiB",
        "KiB per subscriber",
        "SSE / WebSocket",
    ]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
