"""One-off status over REST: requests a second that ``GET /tasks/{id}`` serves, against a
bare Starlette endpoint doing one ``redis.asyncio`` GET and orjson (``bench.bare_rest``),
and the tutorial's ``AsyncResult`` endpoint (``bench.tutorial_app``).

Each server is one uvicorn process pinned to CPU 0; the load comes from this process,
pinned to CPU 1: 50 keep-alive HTTP/1.1 connections, each reading a task of its own and
sending its next request as soon as the last answer is read. The servers take turns,
several rounds, so that the machine's noise falls on all of them alike; the figure is
each one's median. ``--connections 1`` shows the cost of one request alone.

    uv run python -m bench.rest [--seconds 5] [--rounds 3] [--connections 50]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Callable

from bench.stack import Stack, machine, parser, table, write_progress

CONNECTIONS = 50


async def keep_alive(
    address: str,
    request: bytes,
    stop: float,
    expect: bytes = b"200",
    on_body: Callable[[bytes], None] | None = None,
) -> int:
    """Send ``request`` on one keep-alive connection, again as soon as each answer is
    read, until ``stop`` (loop time); each answer must have status ``expect``, and its
    body goes to ``on_body``. Returns how many were answered."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    loop = asyncio.get_running_loop()
    answered = 0
    status_line = b"HTTP/1.1 " + expect
    try:
        while loop.time() < stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            if not head.startswith(status_line):
                raise RuntimeError(f"not {expect.decode()}: {head[:40]!r} {body[:200]!r}")
            if on_body is not None:
                on_body(body)
            answered += 1
    finally:
        writer.close()
    return answered


async def load(address: str, paths: list[str], seconds: float) -> float:
    """Requests a second that keep-alive clients, one per path, get answered."""
    requests = [f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode() for path in paths]
    loop = asyncio.get_running_loop()
    # A short warm-up on every connection first (first allocations, caches), not counted.
    await asyncio.gather(*(keep_alive(address, request, loop.time() + 0.5) for request in requests))
    started = time.perf_counter()
    answered = await asyncio.gather(
        *(keep_alive(address, request, loop.time() + seconds) for request in requests)
    )
    return sum(answered) / (time.perf_counter() - started)


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--seconds", type=float, default=5.0, help="per server and round")
    arguments.add_argument("--rounds", type=int, default=3)
    arguments.add_argument("--connections", type=int, default=CONNECTIONS)
    args = arguments.parse_args()
    seconds, rounds = (1.0, 1) if args.small else (args.seconds, args.rounds)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = cpus[0], cpus[-1]
    os.sched_setaffinity(0, {client_cpu})
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        pass

    with Stack() as stack:
        servers = {
            "taskcast `GET /tasks/{id}`": (stack.serve("taskcast", "taskcast"), "/tasks/{}"),
            "bare Starlette + redis.asyncio GET + orjson": (
                stack.serve("bare", "bench.bare_rest"),
                "/tasks/{}",
            ),
            "tutorial (`AsyncResult` in a thread)": (
                stack.serve("tutorial", "bench.tutorial_app"),
                "/task-status/{}",
            ),
        }
        for server, _ in servers.values():
            os.sched_setaffinity(server.pid, {server_cpu})
        # Each connection reads a task of its own, as the clients of different jobs do.
        task_ids = [str(uuid.uuid4()) for _ in range(args.connections)]
        for task_id in task_ids:
            write_progress(task_id, 3, 10)
        results: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, (server, path) in servers.items():
                paths = [path.format(task_id) for task_id in task_ids]
                rate = asyncio.run(load(server.address, paths, seconds))
                results[name].append(rate)
    medians = {name: statistics.median(rates) for name, rates in results.items()}
    bare = medians["bare Starlette + redis.asyncio GET + orjson"]
    tutorial = medians["tutorial (`AsyncResult` in a thread)"]
    rows = [
        (name, f"{medians[name]:,.0f}", " / ".join(f"{rate:,.0f}" for rate in rates),
         f"{medians[name] / bare:.2f}x", f"{medians[name] / tutorial:.2f}x")
        for name, rates in results.items()
    ]  # fmt: skip
    print(
        f"one-off status, {args.connections} keep-alive connections, server on one CPU "
        f"({machine()}); {rounds} round(s) of {seconds:g} s"
    )
    print(table(["server", "requests/s (median)", "each round", "x bare", "x tutorial"], rows))


if __name__ == "__main__":
    main()
