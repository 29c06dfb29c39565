"""Load held over time, on two service processes: nothing dropped, memory flat, Redis cost bounded.

Two taskcast processes (two ports: the scale-out of one machine; ``--processes``)
share the subscribers of the same tasks. A real worker runs T ``progress`` tasks for
about a minute; N sockets, spread over the processes, each watch one of them on
``/ws/tasks/{id}`` until the server ends the socket. A socket closed with 1000 has had
its final status (the server closes a task's socket that way only after its final);
any other ending is a dropped socket. Meanwhile both processes' RSS and open file
descriptors are sampled, and Redis's own ``INFO commandstats`` counts the commands of
the whole run.

With ``--proxy``, nginx runs in front of the processes with the shipped
deploy/nginx/taskcast.conf (``bench.proxy``), and every socket connects to nginx, which
spreads them over the processes (least_conn); without it, sockets go to the processes
round-robin, directly.

The per-unit costs a capacity model needs are measured: each process's CPU time over
the hold (from its first connection to the last close, /proc/<pid>/stat), per frame
received; nginx's (master and workers) likewise; how many sockets each process held
(its own ``/metrics``), and its open files at peak.

Run it with two socket counts to see that Redis commands follow processes x watched
tasks and not sockets:

    uv run python -m bench.soak --sockets 5000
    uv run python -m bench.soak --sockets 500
    uv run python -m bench.soak --sockets 500 --processes 1
    uv run python -m bench.soak --sockets 10000 --processes 3 --proxy
    uv run python -m bench.soak --small
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import psutil

from bench.clients import Sockets
from bench.proxy import NGINX, REPLICA_ENV, Nginx, render
from bench.redis_commands import commands
from bench.stack import Server, Stack, cpu_seconds, machine, parser, table
from taskcast.cli.devstack import free_port

SAMPLE_EVERY = 5.0


def open_files(pids: Sequence[int]) -> int:
    """File descriptors the processes ``pids`` hold now."""
    return sum(psutil.Process(pid).num_fds() for pid in pids)


def machine_busy() -> tuple[float, float]:
    """The machine's busy and total CPU time so far, in seconds."""
    times = psutil.cpu_times()
    total = sum(times)
    return total - times.idle - times.iowait, total


def websockets_held(server: Server) -> int:
    """The WebSockets ``server`` holds, as its own /metrics says."""
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^taskcast_ws_connections (\S+)$", text, re.MULTILINE)
    assert found, text
    return int(float(found.group(1)))


def raise_file_limit(needed: int) -> int:
    """This process's (and so its children's) soft limit on open files, raised towards
    ``needed`` as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


class _Sampler(threading.Thread):
    """Reads the servers' RSS and open files (and nginx's open files) every few seconds
    until stopped."""

    def __init__(self, servers: list[Server], nginx: Nginx | None) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.nginx = nginx
        self.samples: dict[str, list[int]] = {server.name: [] for server in servers}
        self.files: dict[str, list[int]] = {server.name: [] for server in servers}
        self.nginx_files: dict[int, list[int]] = {}  # per process id
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            for server in self.servers:
                self.samples[server.name].append(server.rss())
                self.files[server.name].append(open_files([server.pid]))
            if self.nginx is not None:
                for pid in self.nginx.pids():
                    self.nginx_files.setdefault(pid, []).append(open_files([pid]))
            if self.stopped.wait(SAMPLE_EVERY):
                return


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--sockets", type=int, default=5000)
    arguments.add_argument("--tasks", type=int, default=10)
    arguments.add_argument("--processes", type=int, default=2, help="service processes")
    arguments.add_argument("--seconds", type=int, default=60, help="how long each task runs")
    arguments.add_argument(
        "--proxy", action="store_true", help="nginx in front, as deploy/nginx ships it"
    )
    args = arguments.parse_args()
    sockets, tasks, steps = (200, 4, 10) if args.small else (args.sockets, args.tasks, args.seconds)
    step_seconds = 0.2 if args.small else 1.0
    # A client process or a service process may hold every socket (nginx's least_conn
    # decides where they go); the children inherit this limit.
    if args.proxy and not os.path.exists(NGINX):
        raise SystemExit(f"--proxy needs Debian's nginx at {NGINX}: apt-get install nginx")
    file_limit = raise_file_limit(sockets + 256)
    if file_limit < sockets + 256:
        raise SystemExit(f"open files limited to {file_limit}: too few for {sockets} sockets")

    with Stack() as stack, contextlib.ExitStack() as later:
        stack.worker("--pool", "threads", "--concurrency", str(tasks))
        env = REPLICA_ENV if args.proxy else {}
        servers = [
            stack.serve(f"taskcast-{i + 1}", "taskcast", **env) for i in range(args.processes)
        ]
        nginx = None
        if args.proxy:
            directory = Path(later.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            port = free_port()
            site = render(f"127.0.0.1:{port}", [server.address for server in servers])
            # A worker may accept every client: two connections per socket, and room.
            nginx = Nginx(NGINX, directory, site, port, connections=2 * sockets + 512)
            later.callback(nginx.stop)
            nginx.start()
            nginx.wait_ready()

        from taskcast_celery.demo.celery import app as celery_app

        redis = celery_app.backend.client
        kwargs = {"total": steps, "step_seconds": step_seconds}
        task_ids = [
            celery_app.send_task("taskcast.progress", kwargs=kwargs).id for _ in range(tasks)
        ]
        # Every socket to nginx, or the processes' in turn.
        bases = [nginx.url] if nginx else [server.url("") for server in servers]
        bases = [base.replace("http://", "ws://", 1) for base in bases]
        urls = [f"{bases[i % len(bases)]}/ws/tasks/{task_ids[i % tasks]}" for i in range(sockets)]
        pids = {server.name: [server.pid] for server in servers}
        if nginx is not None:
            pids["nginx"] = nginx.pids()
        before = commands(redis)
        cpu_before = {name: cpu_seconds(ids) for name, ids in pids.items()}
        busy_before = machine_busy()
        started = time.monotonic()
        sampler = _Sampler(servers, nginx)
        with Sockets(urls, server_closes=True) as clients:
            connected = time.monotonic() - started
            cpu_connected = {name: cpu_seconds(ids) for name, ids in pids.items()}
            held_by = {server.name: websockets_held(server) for server in servers}
            sampler.start()
            codes, frames = clients.closed(timeout=steps * step_seconds * 3 + 120)
            held = time.monotonic() - started
            cpu_after = {name: cpu_seconds(ids) for name, ids in pids.items()}
            busy_after = machine_busy()
            clients_cpu = cpu_seconds([process.pid for process in clients.processes])
            client_processes = len(clients.processes)
        sampler.stopped.set()
        sampler.join()
        counted = commands(redis)
        counted.subtract(before)
        finals = {celery_app.backend.get_task_meta(task_id)["status"] for task_id in task_ids}
        nginx_errors = []
        if nginx is not None:
            nginx_errors = re.findall(r"^.*\[(?:error|crit|alert|emerg)\].*$", nginx.errors(), re.M)

    dropped = sockets - codes.get(1000, 0)
    print(
        f"soak: {sockets:,} sockets on {len(servers)} processes"
        f"{' behind nginx' if nginx else ''}, {tasks} tasks of {steps} steps ({machine()})"
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
    rows.append(
        [
            "WebSockets per process, all connected (its /metrics)",
            ", ".join(f"{name} {count:,}" for name, count in held_by.items()),
        ]
    )
    rows.append(
        [
            "open files per process at peak (sampled with RSS)",
            ", ".join(f"{name} {max(files):,}" for name, files in sampler.files.items()),
        ]
    )

    def spent(name: str) -> str:
        connecting = cpu_connected[name] - cpu_before[name]
        total = cpu_after[name] - cpu_before[name]
        return f"{total:.2f} ({connecting:.2f} while connecting)"

    service_cpu = sum(cpu_after[server.name] - cpu_before[server.name] for server in servers)
    service_connecting = sum(
        cpu_connected[server.name] - cpu_before[server.name] for server in servers
    )
    rows.append(
        [
            "service CPU s over the hold, per process",
            ", ".join(f"{server.name} {spent(server.name)}" for server in servers),
        ]
    )
    rows.append(
        [
            "service CPU s over the hold, all processes",
            f"{service_cpu:.2f} ({service_connecting:.2f} while connecting)",
        ]
    )
    rows.append(["service CPU µs per frame received", f"{service_cpu / frames * 1e6:,.1f}"])
    rows.append(
        [
            "service CPU µs per socket while connecting (frames then included)",
            f"{service_connecting / sockets * 1e6:,.1f}",
        ]
    )
    if nginx is not None:
        nginx_cpu = cpu_after["nginx"] - cpu_before["nginx"]
        workers = len(pids["nginx"]) - 1
        rows.append([f"nginx CPU s over the hold (master + {workers} workers)", spent("nginx")])
        rows.append(["nginx CPU µs per frame received", f"{nginx_cpu / frames * 1e6:,.1f}"])
        rows.append(["nginx CPU / service CPU", f"{nginx_cpu / service_cpu:.2f}"])
        peaks = [max(files) for files in sampler.nginx_files.values()]
        rows.append(
            [
                "nginx open files at peak (master, workers)",
                ", ".join(f"{peak:,}" for peak in peaks),
            ]
        )
        rows.append(
            [
                "nginx errors logged",
                f"{len(nginx_errors)}" + (f": first {nginx_errors[0]}" if nginx_errors else ""),
            ]
        )
    busy = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])
    rows.append(
        [
            "load generators' CPU s over the hold",
            f"{clients_cpu:.2f} ({client_processes} processes)",
        ]
    )
    rows.append(
        [
            "machine CPU busy over the hold (/proc/stat)",
            f"{busy:.0%} of {os.cpu_count()} CPUs",
        ]
    )
    print(table(["measure", "value"], rows))
    if dropped or finals != {"SUCCESS"}:
        raise SystemExit("lost something: see the table")


if __name__ == "__main__":
    main()
