"""Server memory per idle subscriber: the RSS a server process grows by, divided by N.

Each scenario gets a fresh server process: it is warmed up with a few connections,
its RSS is read, then N clients (in processes of their own) connect and subscribe,
and once every one has its snapshot the RSS is read again. The bare Starlette
endpoint of ``bench.ceiling`` shows what an idle WebSocket costs this stack at all.

    uv run python -m bench.memory [--small] [--subscribers 10000]
"""

from __future__ import annotations

import uuid

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


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--subscribers", type=int, default=10_000)
    args = arguments.parse_args()
    n = 500 if args.small else args.subscribers

    with Stack() as stack:
        from taskcast_celery.demo.celery import app as celery_app

        # Tasks that exist (recorded as SENT) and stay idle for the whole run.
        task_ids = [str(uuid.uuid4()) for _ in range(n)]
        for task_id in task_ids:
            celery_app.backend.record_sent(task_id, None)

        scenarios = [
            ("ceiling (bare Starlette)", "bench.ceiling", lambda i: "/ws"),
            ("taskcast, all on one task", "taskcast", lambda i: f"/ws/tasks/{task_ids[0]}"),
            ("taskcast, one task each", "taskcast", lambda i: f"/ws/tasks/{task_ids[i]}"),
        ]
        rows = []
        for i, (name, module, path) in enumerate(scenarios):
            server = stack.serve(f"server-{i}", module)
            grown = _grows_by(server, [server.url(path(j), "ws") for j in range(n)])
            per = grown / n / 1024
            rows.append([name, f"{n:,}", f"{grown / 2**20:.1f}", f"{per:.1f}"])
    print(f"memory per idle subscriber ({machine()}); target <= {TARGET_KIB} KiB for taskcast")
    print(table(["server", "subscribers", "RSS growth MiB", "KiB per subscriber"], rows))


if __name__ == "__main__":
    main()
