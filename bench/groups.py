"""Groups: N tasks followed as one group subscription against each member followed; and
what reading heartbeats costs the hub.

The group is started for real (``POST /groups/progress``) on a service whose queue
nobody consumes: its members have SENT records and the group its record of members.
The driver then plays the workers as ``update_state`` writes: a PROGRESS record for one
member after another, round robin, at a fixed total rate; before each window it writes
every member's heartbeat as a worker would (Redis's clock), so that none is stalled.
Each window lasts a fixed time, with W clients on ``/ws`` that either subscribe to the
group (one subscription each) or to each of its N members, and counts:

- frames per second each client receives;
- Redis commands per second the service spends (Redis's own ``INFO commandstats``,
  minus the writer's own commands per write, measured in a window with no client);
- the service process's CPU time per member change.

Then heartbeats: one client follows the largest group on a service that reads them
(``TASKCAST_STALL_AFTER=30``, the default) and on one that does not (``0``), with the
members quiet and while they report: Redis commands, Redis's own time in the MGETs,
and the hub's read time (its ``taskcast_hub_read_seconds`` histogram). At last every
member succeeds, and the group's socket must end with its final frame (close 1000).

    uv run python -m bench.groups [--small] [--sizes 10 100 1000] [--watchers 1 100]
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import psutil

from bench.clients import Sockets
from bench.redis_commands import commands
from bench.stack import Server, Stack, machine, parser, table, write_progress

TOTAL = 1_000_000


class _Writer(threading.Thread):
    """Writes the members' progress round robin, ``rate`` changes a second, until stopped.

    Each write's ``current`` is the next of ``steps``, shared by every writer of a run:
    every write changes its member's record (the same record written again would not).
    """

    def __init__(self, members: list[str], rate: float, steps: Iterator[int]) -> None:
        super().__init__(daemon=True)
        self.members = members
        self.rate = rate
        self.steps = steps
        self.writes = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopped.wait(max(0.0, started + self.writes / self.rate - time.monotonic())):
            task_id = self.members[self.writes % len(self.members)]
            write_progress(task_id, next(self.steps), TOTAL)
            self.writes += 1


@dataclass
class _Window:
    """What one window counted: the service's share of Redis's commands is ``spent``."""

    took: float
    writes: int
    spent: Counter[str]
    mget_usec: int
    cpu: float
    frames: int
    reads: int
    read_seconds: float

    def per_second(self, count: float) -> str:
        return f"{count / self.took:,.1f}"

    def commands(self) -> list[str]:
        """Commands per second, all, then the top three by name."""
        top = [
            f"{name} {self.per_second(count)}"
            for name, count in self.spent.most_common(3)
            if count >= 0.05 * self.took
        ]
        return [self.per_second(self.spent.total()), ", ".join(top) or "none"]


class _Driver:
    """Plays the workers, and counts what a window of clients costs a service."""

    def __init__(self, redis: Any, seconds: float, settle: float) -> None:
        self.redis = redis
        self.seconds = seconds
        self.settle = settle
        # The writer's own commands per write, taken out of every window's count.
        self.per_write: dict[str, float] = {}
        self.steps = itertools.count(1)

    def beat(self, members: list[str]) -> None:
        """Every member's heartbeat, written now as a worker writes it."""
        from taskcast_celery import keys
        from taskcast_celery.demo.celery import app as celery_app

        seconds, micros = self.redis.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in members:
                pipe.set(
                    keys.heartbeat_key(celery_app.backend.key_prefix, task_id),
                    seconds * 1000 + micros // 1000,
                )
            pipe.execute()

    def window(
        self, server: Server, members: list[str], rate: float, sockets: Sockets | None = None
    ) -> _Window:
        """Count ``seconds`` of the service's work while the members change at ``rate``."""
        self.beat(members)
        writer = _Writer(members, rate, self.steps)
        if rate:
            writer.start()
        frames = self._wait(sockets, self.settle)
        before = self._counts(server, writer)
        started = time.monotonic()
        frames = self._wait(sockets, self.seconds) - frames
        took = time.monotonic() - started
        after = self._counts(server, writer)
        writer.stopped.set()
        if rate:
            writer.join()
        counted, usec, cpu, reads, read_seconds, writes = (
            b - a for a, b in zip(before, after, strict=True)
        )
        spent = +Counter(
            {name: n - self.per_write.get(name, 0) * writes for name, n in counted.items()}
        )
        return _Window(took, writes, spent, usec, cpu, frames, reads, read_seconds)

    def writer_alone(self, server: Server, members: list[str], rate: float) -> _Window:
        """A window with no client: the writer's own commands, per write from now on."""
        self.per_write = {}
        alone = self.window(server, members, rate)
        self.per_write = {name: n / alone.writes for name, n in alone.spent.items()}
        return alone

    def _counts(self, server: Server, writer: _Writer) -> tuple[Any, ...]:
        """Redis's commands and MGET time, the server's CPU time, the hub's reads and
        the seconds it waited on them (its /metrics histogram), the writer's writes."""
        with urllib.request.urlopen(server.url("/metrics")) as response:
            lines = response.read().decode().splitlines()
        hub = dict(line.split(" ", 1) for line in lines if line.startswith("taskcast_hub_read"))
        mget = self.redis.info("commandstats").get("cmdstat_mget", {}).get("usec", 0)
        cpu = psutil.Process(server.pid).cpu_times()
        return (
            commands(self.redis),
            int(mget),
            cpu.user + cpu.system,
            float(hub["taskcast_hub_read_seconds_count"]),
            float(hub["taskcast_hub_read_seconds_sum"]),
            writer.writes,
        )

    @staticmethod
    def _wait(sockets: Sockets | None, seconds: float) -> int:
        """Wait, reading the clients' reports; frames every client has had by then."""
        if sockets is None:
            time.sleep(seconds)
            return 0
        return sockets.frames_within(seconds)


def _subscribe(key: str, ids: list[str]) -> list[str]:
    return [orjson.dumps({"op": "subscribe", key: watched}).decode() for watched in ids]


@contextlib.contextmanager
def _following(url: str, w: int, sends: list[str]) -> Iterator[Sockets]:
    """W clients, each with the snapshot of every subscription in ``sends``. They
    subscribe at once: W reads of a group's record the hub does not know yet."""
    with Sockets([url] * w, sends=sends) as sockets:  # returns with every first frame
        if len(sends) > 1:
            sockets.frame(len(sends))
        yield sockets


def _start_group(server: Server, size: int) -> tuple[str, list[str]]:
    """``POST /groups/progress``: the group's id and its members' ids."""
    body = {"count": size, "params": {"total": 10, "step_seconds": 1}}
    request = urllib.request.Request(server.url("/groups/progress"), data=orjson.dumps(body))
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request) as response:
        reply = orjson.loads(response.read())
    return reply["group_id"], reply["task_ids"]


def _finish(server: Server, group_id: str, members: list[str]) -> None:
    """Every member succeeds: the group's own socket must get the final and close 1000."""
    from taskcast_celery.demo.celery import app as celery_app

    with Sockets([server.url(f"/ws/groups/{group_id}", "ws")], server_closes=True) as end:
        for task_id in members:
            celery_app.backend.store_result(task_id, {"done": True}, "SUCCESS")
        codes, _ = end.closed(timeout=30)
    if codes != Counter({1000: 1}):
        raise SystemExit(f"the group of {len(members)} did not end with its final: {dict(codes)}")


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    arguments.add_argument("--watchers", type=int, nargs="+", default=[1, 100])
    arguments.add_argument("--rate", type=float, default=100.0, help="member changes a second")
    arguments.add_argument("--seconds", type=float, default=10.0, help="each window")
    args = arguments.parse_args()
    small = args.small
    sizes, watchers = ([100], [1, 10]) if small else (args.sizes, args.watchers)
    seconds, settle = (1.0, 0.5) if small else (args.seconds, 1.0)
    # Each member of the largest group followed from one socket, all subscribed at once.
    limits = {
        "TASKCAST_MAX_SUBSCRIPTIONS": str(max(sizes)),
        "TASKCAST_SUBSCRIBE_RATE": str(10**6),
        "TASKCAST_SUBSCRIBE_BURST": str(10**6),
    }
    rows: list[list[str]] = []
    beat_rows: list[list[str]] = []

    with Stack() as stack:
        servers = {
            stall: stack.serve(
                f"taskcast-stall-{stall}", "taskcast", TASKCAST_STALL_AFTER=str(stall), **limits
            )
            for stall in (30, 0)
        }
        taskcast = servers[30]

        from taskcast_celery.demo.celery import app as celery_app

        driver = _Driver(celery_app.backend.client, seconds, settle)
        for n in sizes:
            group_id, members = _start_group(taskcast, n)
            for task_id in members:
                write_progress(task_id, 0, TOTAL)
            alone = driver.writer_alone(taskcast, members, args.rate)
            rows.append([f"{n:,}", "0", "(writer alone)", "", *alone.commands(), ""])
            for w in watchers:
                for group in (True, False):
                    sends = (
                        _subscribe("group_id", [group_id])
                        if group
                        else _subscribe("task_id", members)
                    )
                    with _following(taskcast.url("/ws", "ws"), w, sends) as sockets:
                        counted = driver.window(taskcast, members, args.rate, sockets)
                    rows.append(
                        [
                            f"{n:,}",
                            f"{w:,}",
                            "the group (1)" if group else f"each member ({n:,})",
                            counted.per_second(counted.frames),
                            *counted.commands(),
                            f"{counted.cpu * 1000 / max(counted.writes, 1):.3f}",
                        ]
                    )
            if n == max(sizes):
                for stall, server in servers.items():
                    for rate in (0.0, args.rate):
                        sends = _subscribe("group_id", [group_id])
                        with Sockets([server.url("/ws", "ws")], sends=sends) as sockets:
                            counted = driver.window(server, members, rate, sockets)
                        beat_rows.append(
                            [
                                f"{stall} s" if stall else "0 (off)",
                                counted.per_second(counted.writes),
                                *counted.commands(),
                                f"{counted.mget_usec / max(counted.spent['mget'], 1):,.0f}",
                                counted.per_second(counted.reads),
                                f"{counted.read_seconds * 1000 / max(counted.reads, 1):.3f}",
                                f"{counted.cpu * 100 / counted.took:.1f}",
                            ]
                        )
            _finish(taskcast, group_id, members)

    print(f"groups: {args.rate:g} member changes/s, {seconds:g} s windows ({machine()})")
    headers = [
        "members",
        "clients",
        "each client follows",
        "frames/s per client",
        "service Redis commands/s",
        "by command, /s",
        "service CPU ms per change",
    ]
    print(table(headers, rows))
    print(f"\nheartbeat reads: one client follows the group of {max(sizes):,} running members")
    headers = [
        "TASKCAST_STALL_AFTER",
        "member changes/s",
        "service Redis commands/s",
        "by command, /s",
        "Redis µs per MGET",
        "hub reads/s",
        "hub read ms, mean",
        "service CPU %",
    ]
    print(table(headers, beat_rows))


if __name__ == "__main__":
    main()
