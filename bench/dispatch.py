"""Dispatch, and what a task costs Redis: the per-unit figures of the capacity model in
docs/operations.md for D dispatches a second.

One ``taskcast serve`` process pinned to CPU 0; the load comes from this process, pinned
to CPU 1: keep-alive HTTP/1.1 connections, each sending ``POST /tasks/sleep`` (``{"seconds":
0}``) as soon as the last answer is read. Nobody consumes the queue meanwhile, so the
figures are the service's alone: dispatches a second, service CPU per dispatch (from the
process's own CPU time), and Redis commands per dispatch (Redis's ``INFO commandstats``,
a private Redis). Then a worker (prefork, ``--concurrency`` processes, on both CPUs) runs
the queued tasks: tasks a second to drain them, and Redis commands per task run.

    uv run python -m bench.dispatch [--seconds 5] [--connections 50] [--concurrency 2]
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter

from bench.redis_commands import commands
from bench.rest import keep_alive
from bench.stack import Stack, cpu_seconds, machine, parser, table

CONNECTIONS = 50
BODY = b'{"seconds": 0}'


async def dispatch(address: str, connections: int, seconds: float) -> tuple[list[str], float]:
    """The ids of the tasks dispatched in ``seconds``, and the seconds it took."""
    task_ids: list[str] = []
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    stop = loop.time() + seconds
    request = (
        f"POST /tasks/sleep HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY

    def queued(body: bytes) -> None:
        task_ids.append(json.loads(body)["task_id"])

    await asyncio.gather(
        *(keep_alive(address, request, stop, b"202", queued) for _ in range(connections))
    )
    return task_ids, time.perf_counter() - started


def per(counted: Counter[str], count: int) -> str:
    """Commands per unit, the largest first."""
    shown = [(name, calls / count) for name, calls in counted.most_common(6)]
    return ", ".join(f"{name} {each:.2f}" for name, each in shown if each >= 0.005)


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--seconds", type=float, default=5.0)
    arguments.add_argument("--connections", type=int, default=CONNECTIONS)
    arguments.add_argument("--concurrency", type=int, default=2, help="worker processes")
    args = arguments.parse_args()
    seconds = 1.0 if args.small else args.seconds
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})

    with Stack() as stack:
        server = stack.serve("taskcast", "taskcast")
        os.sched_setaffinity(server.pid, {cpus[0]})
        from taskcast_celery import keys
        from taskcast_celery.demo.celery import app as celery_app

        redis = celery_app.backend.client
        prefix = celery_app.backend.key_prefix
        # A warm-up, not counted (first imports and allocations on the dispatch path).
        warm_up, _ = asyncio.run(dispatch(server.address, args.connections, 0.5))
        before, cpu_before = commands(redis), cpu_seconds([server.pid])
        task_ids, took = asyncio.run(dispatch(server.address, args.connections, seconds))
        by_service = commands(redis)
        by_service.subtract(before)
        service_cpu = cpu_seconds([server.pid]) - cpu_before

        queued = len(warm_up) + len(task_ids)
        every_key = [keys.task_meta_key(prefix, task_id) for task_id in warm_up + task_ids]
        started = time.perf_counter()
        stack.worker("--pool", "prefork", "--concurrency", str(args.concurrency))
        polls = 0
        done = 0
        while done < queued:
            time.sleep(0.1)
            polls += 1
            records = redis.mget(every_key)
            done = sum(b'"SUCCESS"' in record for record in records if record)
            if time.perf_counter() - started > 300:
                raise SystemExit(f"only {done} of {queued} tasks ran in 300 s")
        drained = time.perf_counter() - started
        by_worker = commands(redis)
        by_worker.subtract(before)
        by_worker.subtract(by_service)
        by_worker["mget"] -= polls  # the driver's own
        by_worker = +by_worker

    rate = len(task_ids) / took
    print(
        f"dispatch: POST /tasks/sleep on {args.connections} keep-alive connections, service "
        f"on one CPU, {seconds:g} s; then a worker of {args.concurrency} processes ({machine()})"
    )
    rows = [
        ["dispatches/s (202 answers)", f"{rate:,.0f}"],
        ["service CPU per dispatch", f"{service_cpu / len(task_ids) * 1e6:,.0f} µs"],
        [
            "Redis commands per dispatch",
            f"{by_service.total() / len(task_ids):.2f} ({per(by_service, len(task_ids))})",
        ],
        [
            "tasks run/s, worker started to the last SUCCESS",
            f"{queued / drained:,.0f} ({queued:,} tasks in {drained:.1f} s, worker start included)",
        ],
        [
            "Redis commands per task run",
            f"{by_worker.total() / queued:.2f} ({per(by_worker, queued)})",
        ],
    ]
    print(table(["measure", "value"], rows))


if __name__ == "__main__":
    main()
