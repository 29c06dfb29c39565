"""Load held over time, on two service processes: nothing dropped, memory flat, Redis cost bounded.

Two taskcast processes (two ports: the scale-out of one machine; ``--processes``)
share the subscribers of the same tasks. A real worker runs T ``progress`` tasks for
about a minute; N sockets, spread over the processes, each watch one of them on
``/ws/tasks/{id}`` until the server ends the socket. A socket closed with 1000 has had
its final status (the server closes a task's socket that way only after its final);
any other ending is a dropped socket. Meanwhile both processes' RSS is sampled, and
Redis's own ``INFO commandstats`` counts the commands of the whole run.

Run it with two socket counts to see that Redis commands follow processes x watched
tasks and not sockets:

    uv run python -m bench.soak --sockets 5000
    uv run python -m bench.soak --sockets 500
    uv run python -m bench.soak --sockets 500 --processes 1
    uv run python -m bench.soak --small
"""

from __future__ import annotations

import statistics
import threading
import time

from bench.clients import Sockets
from bench.redis_commands import commands
from bench.stack import Server, Stack, machine, parser, table

SAMPLE_EVERY = 5.0


class _Sampler(threading.Thread):
    """Reads the servers' RSS every few seconds until stopped."""

    def __init__(self, servers: list[Server]) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.samples: dict[str, list[int]] = {server.name: [] for server in servers}
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            for server in self.servers:
                self.samples[server.name].append(server.rss())
            if self.stopped.wait(SAMPLE_EVERY):
                return


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--sockets", type=int, default=5000)
    arguments.add_argument("--tasks", type=int, default=10)
    arguments.add_argument("--processes", type=int, default=2, help="service processes")
    arguments.add_argument("--seconds", type=int, default=60, help="how long each task runs")
    args = arguments.parse_args()
    sockets, tasks, steps = (200, 4, 10) if args.small else (args.sockets, args.tasks, args.seconds)
    step_seconds = 0.2 if args.small else 1.0

    with Stack() as stack:
        stack.worker("--pool", "threads", "--concurrency", str(tasks))
        servers = [stack.serve(f"taskcast-{i + 1}", "taskcast") for i in range(args.processes)]

        from taskcast_celery.demo.celery import app as celery_app

        redis = celery_app.backend.client
        kwargs = {"total": steps, "step_seconds": step_seconds}
        task_ids = [
            celery_app.send_task("taskcast.progress", kwargs=kwargs).id for _ in range(tasks)
        ]
        urls = [
            servers[i % len(servers)].url(f"/ws/tasks/{task_ids[i % tasks]}", "ws")
            for i in range(sockets)
        ]
        before = commands(redis)
        started = time.monotonic()
        sampler = _Sampler(servers)
        with Sockets(urls, server_closes=True) as clients:
            connected = time.monotonic() - started
            sampler.start()
            codes, frames = clients.closed(timeout=steps * step_seconds * 3 + 120)
        held = time.monotonic() - started
        sampler.stopped.set()
        sampler.join()
        counted = commands(redis)
        counted.subtract(before)
        finals = {celery_app.backend.get_task_meta(task_id)["status"] for task_id in task_ids}

    dropped = sockets - codes.get(1000, 0)
    print(
        f"soak: {sockets:,} sockets on {len(servers)} processes, {tasks} tasks of {steps} steps "
        f"({machine()})"
    )
    rows = [
        ["sockets connected", f"{sockets:,} in {connected:.1f} s"],
        ["held until the last final", f"{held:.1f} s"],
        ["tasks' final states", ", ".join(sorted(finals))],
        ["sockets closed 1000 after their final", f"{codes.get(1000, 0):,}"],
        ["sockets dropped (any other ending)", f"{dropped:,} {dict(codes) if dropped else ''}"],
        ["frames received", f"{frames:,}"],
    ]
    for name, samples in sampler.samples.items():
        mib = [sample / 2**20 for sample in samples]
        rows.append(
            [
                f"RSS of {name}, MiB (every {SAMPLE_EVERY:g} s)",
                f"first {mib[0]:.1f}, median {statistics.median(mib):.1f}, last {mib[-1]:.1f}, "
                f"max {max(mib):.1f}",
            ]
        )
    mgets = counted["mget"] / held
    rows.append(["Redis commands/s, all", f"{sum(counted.values()) / held:,.1f}"])
    rows.append(
        [
            "MGET/s (the hubs' reads)",
            f"{mgets:,.1f} = {mgets / len(servers):,.1f} per process for {tasks} watched tasks",
        ]
    )
    print(table(["measure", "value"], rows))
    if dropped or finals != {"SUCCESS"}:
        raise SystemExit("lost something: see the table")


if __name__ == "__main__":
    main()
