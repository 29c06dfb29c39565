"""Feeds: owners' tasks followed as one feed subscription per owner, against the same
tasks followed one subscription each; what a feed costs the service and Redis.

O owners (1,000) have T unfinished tasks each (10). The driver plays their workers: each
task's SENT record is written by the backend's owned SENT script (``record_sent`` with
the owner), then its PROGRESS records by the backend's store script, with the arguments
the backend itself builds for a worker's request that carries the owner's headers, so
the script does for each write what it does for a worker's. The writes go out in
pipelines of a few milliseconds' worth (a worker sends one at a time: the same commands
for Redis, fewer round trips for a driver that must make thousands a second on the same
cores as the service). Tasks report round robin, ``--rate`` writes a second in all;
each write's ``current`` is the time it was made (µs since the run began), so every
client measures write -> receipt itself, on the same clock.

Scenarios, each a window of ``--seconds`` once every client has its answer and a second
has passed:

- writer alone: the writer's own Redis commands per update, taken out of the others';
- feeds: C sockets per owner on ``/ws``, each ``{"op": "subscribe", "feed": owner}``;
- tasks: one socket per owner on ``/ws``, subscribing to each of its T tasks.

Each window counts the frames the clients received (and the share of the updates that
reached every client they were due to), write -> receipt p50/p99/max, the service's CPU
per frame, the Redis commands per update the service spent (the window's, minus the
writer's per write) and Redis's own CPU per update; and, from the start of each
scenario, the time from subscribe to answer while every socket subscribed at once.

Then, under the same load: a subscribe to an owner nobody follows, with T unfinished
tasks (one socket, its feed; or its T tasks), one at a time; and a new task joining a
followed feed: its owned SENT record written -> its first status at the feed's client.

    uv run python -m bench.feeds [--small] [--owners 1000] [--tasks 10] [--rate 10000]
        [--seconds 10] [--clients 1 3] [--rounds 2] [--probes 20]
"""

from __future__ import annotations

import asyncio
import functools
import math
import multiprocessing
import multiprocessing.connection
import os
import statistics
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

import orjson
from websockets.sync.client import connect
from websockets.uri import WebSocketURI, parse_uri

from bench.clients import WebSocketClient, stop_children
from bench.redis_commands import commands
from bench.stack import Server, Stack, cpu_seconds, machine, parser, percentile, table

TOTAL = 10**12
NAME = "bench.feeds.progress"
# Each pipeline of writes holds at most this much of the rate (a worker's update is one
# round trip of its own; the first write of a pipeline waits for the others this long).
_TICK = 0.005
# Sockets a client process opens at once (as ``bench.clients``).
_CONNECTING = 64
_CURRENT = b'"current":'
# How long a probe waits for its answer before it counts as unanswered.
_PROBE_WAIT = 10.0
_context = multiprocessing.get_context("spawn")


# -- the clients: bare sans-I/O sockets in processes of their own (as bench.clients), that
# also read each status's ``current`` to time it


class _Tally:
    """One client process's counts: answers to the subscribes, then frames and their
    write -> receipt times while a window is open."""

    def __init__(self, sockets: int, report: Connection, epoch: float) -> None:
        self.sockets = sockets
        self.report = report
        self.epoch = epoch
        self.answers: list[float] = []
        self.measuring = False
        self.frames = 0
        self.latencies: list[float] = []
        self.closing = False

    def answered(self, seconds: float) -> None:
        self.answers.append(seconds)
        if len(self.answers) == self.sockets:
            self.report.send(("ready", self.answers))

    def received(self, data: bytes, now: float) -> None:
        if data.startswith(b'{"type":"error"'):
            self.failed(data.decode())
        if not self.measuring:
            return
        self.frames += 1
        at = data.find(_CURRENT)
        if at >= 0:
            # ``"current":<µs>,"total":...``: the write's own time.
            written = int(data[at + len(_CURRENT) : data.index(b",", at)]) / 1e6
            self.latencies.append(now - self.epoch - written)

    def command(self) -> None:
        """A word from the driver: open a window, close it (and report), or stop."""
        word = self.report.recv()
        if word == "start":
            self.frames, self.latencies, self.measuring = 0, [], True
        elif word == "end":
            self.measuring = False
            self.report.send(("window", self.frames, self.latencies))
        else:
            self.closing = True

    def failed(self, why: str) -> None:
        if not self.closing:
            self.closing = True
            self.report.send(("error", why))


class _Follower(WebSocketClient):
    """One WebSocket client: sends its subscribes once connected, takes the first
    ``answer`` frames as their answer, then hands every frame to the tally."""

    def __init__(self, uri: WebSocketURI, tally: _Tally, sends: Sequence[str], answer: int) -> None:
        super().__init__(uri, sends)
        self.tally = tally
        self.answer = answer
        self.subscribed_at = 0.0

    def opened(self) -> None:
        self.subscribed_at = time.time()

    def text(self, data: bytes | bytearray | memoryview, now: float) -> None:
        if self.answer:
            self.answer -= 1
            if not self.answer:
                self.tally.answered(now - self.subscribed_at)
            return
        # (A bytearray from the parser: a copy of a few hundred bytes.)
        self.tally.received(bytes(data), now)

    def refused(self, status_code: int) -> None:
        self.tally.failed(f"handshake refused: HTTP {status_code}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.failed(f"a socket closed early ({exc!r})")


async def _run_followers(
    report: Connection, url: str, plans: Sequence[Sequence[str]], answer: int, epoch: float
) -> None:
    loop = asyncio.get_running_loop()
    tally = _Tally(len(plans), report, epoch)
    stopped = asyncio.Event()

    def command() -> None:
        tally.command()
        if tally.closing:
            stopped.set()

    loop.add_reader(report.fileno(), command)
    uri = parse_uri(url)
    gate = asyncio.Semaphore(_CONNECTING)
    transports: list[asyncio.Transport] = []

    async def open_one(sends: Sequence[str]) -> None:
        factory = functools.partial(_Follower, uri, tally, sends, answer)
        async with gate:
            transport, _ = await loop.create_connection(factory, uri.host, uri.port)
        transports.append(transport)

    try:
        await asyncio.gather(*(open_one(sends) for sends in plans))
    except OSError as exc:
        tally.failed(f"cannot connect: {exc!r}")
    await stopped.wait()
    for transport in transports:
        transport.abort()


def _followers_main(
    report: Connection, url: str, plans: Sequence[Sequence[str]], answer: int, epoch: float
) -> None:
    asyncio.run(_run_followers(report, url, plans, answer, epoch))


class _Followers:
    """Sockets on ``url``, each sending one plan of subscribes, over two processes; the
    context manager returns once every socket has its answer (``answer`` frames)."""

    def __init__(self, url: str, plans: Sequence[Sequence[str]], answer: int, epoch: float) -> None:
        self.url = url
        self.shares = [list(plans[i::2]) for i in range(2) if plans[i::2]]
        self.answer = answer
        self.epoch = epoch
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        # Seconds from each socket's subscribes to its answer, all subscribing at once.
        self.answers: list[float] = []

    def __enter__(self) -> _Followers:
        for share in self.shares:
            here, there = _context.Pipe()
            args = (there, self.url, share, self.answer, self.epoch)
            process = _context.Process(target=_followers_main, args=args, daemon=True)
            process.start()
            self.pipes.append(here)
            self.processes.append(process)
        # Every socket answered, or the benchmark fails: a subscribe left unanswered
        # is a finding, not something to average.
        for reply in self._one_each("ready", timeout=120):
            self.answers += reply[1]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stop_children(self.pipes, self.processes)

    def start(self) -> None:
        for pipe in self.pipes:
            pipe.send("start")

    def end(self) -> tuple[int, list[float]]:
        """Close the window: the frames every client had in it, and their latencies."""
        for pipe in self.pipes:
            pipe.send("end")
        frames, latencies = 0, []
        for reply in self._one_each("window", timeout=60):
            frames += reply[1]
            latencies += reply[2]
        return frames, latencies

    def _one_each(self, kind: str, timeout: float) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        replies, waiting = [], list(self.pipes)
        while waiting:
            ready = multiprocessing.connection.wait(
                waiting, timeout=max(deadline - time.monotonic(), 0)
            )
            if not ready:
                what = "an answer to every subscribe" if kind == "ready" else repr(kind)
                raise TimeoutError(f"no {what} from the clients within {timeout} s")
            for pipe in ready:
                assert isinstance(pipe, Connection)
                reply = pipe.recv()
                if reply[0] == "error":
                    raise RuntimeError(reply[1])
                if reply[0] == kind:
                    replies.append(reply)
                    waiting.remove(pipe)
        return replies


# -- the writer: the workers' records


def _request(owner: str) -> Any:
    """What a worker's ``task.request`` carries for an owned task, as far as the backend
    reads it (``taskcast_celery.owners.from_request``)."""
    return types.SimpleNamespace(taskcast_owner=owner, taskcast_tags=[])


class _Writer(threading.Thread):
    """Writes each task's progress round robin, ``rate`` writes a second, until stopped.

    The arguments of each write are the ones the backend's ``_store_result`` builds for
    a worker (it hands them to ``ensure``, which is made to keep them here); they go to
    the store script in one pipeline per tick.
    """

    def __init__(
        self, backend: Any, tasks: Sequence[tuple[str, str]], rate: float, epoch: float
    ) -> None:
        super().__init__(daemon=True)
        self.backend = backend
        self.tasks = tasks
        self.rate = rate
        self.epoch = epoch
        self.requests = {owner: _request(owner) for _, owner in tasks}
        self.writes = 0
        self.stopped = threading.Event()
        self.progress = threading.Condition()
        # A backend of the same app whose ``ensure`` keeps the script's arguments.
        self.capture = type(backend)(app=backend.app)
        self.kept: list[tuple[Any, ...]] = []
        self.capture.ensure = lambda _script, arguments: self.kept.append(arguments)

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopped.wait(_TICK):
            due = int((time.monotonic() - started) * self.rate) - self.writes
            if due <= 0:
                continue
            # At most four ticks' worth at once: a writer that fell behind (its cores are
            # shared) catches up over a few ticks, not in one huge pipeline.
            due = min(due, max(1, int(self.rate * _TICK * 4)))
            for i in range(self.writes, self.writes + due):
                task_id, owner = self.tasks[i % len(self.tasks)]
                current = int((time.time() - self.epoch) * 1e6)
                meta = {"current": current, "total": TOTAL}
                self.capture.store_result(task_id, meta, "PROGRESS", request=self.requests[owner])
            with self.backend.client.pipeline(transaction=False) as pipe:
                for keys, args in self.kept:
                    self.backend._store_script(keys=keys, args=args, client=pipe)
                pipe.execute()
            self.kept.clear()
            with self.progress:
                self.writes += due
                self.progress.notify_all()

    def wait_for(self, writes: int, timeout: float) -> None:
        """Until ``writes`` writes have been made."""
        with self.progress:
            if not self.progress.wait_for(lambda: self.writes >= writes, timeout):
                raise TimeoutError(f"the writer made {self.writes} of {writes} writes")


# -- the driver


@dataclass
class _Counts:
    """The counters a window reads at each end."""

    at: float
    writes: int
    commands: Counter[str]
    redis_cpu: float
    service_cpu: float

    @classmethod
    def read(cls, redis: Any, server: Server, writer: _Writer) -> _Counts:
        cpu = redis.info("cpu")
        return cls(
            time.monotonic(),
            writer.writes,
            commands(redis),
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            cpu_seconds([server.pid]),
        )


@dataclass
class _Window:
    """What one scenario's window measured."""

    took: float
    writes: int
    spent: Counter[str]  # the service's Redis commands (the writer's taken out)
    redis_cpu: float
    service_cpu: float
    frames: int
    latencies: list[float]

    @classmethod
    def between(
        cls, a: _Counts, b: _Counts, per_write: dict[str, float], frames: int, lat: list[float]
    ) -> _Window:
        writes = b.writes - a.writes
        counted = b.commands - a.commands
        # The writer's pipelines check their script with SCRIPT EXISTS once each; a
        # worker's EVALSHA does not: the driver's own, like its INFO calls.
        counted.pop("script", None)
        spent = +Counter(
            {name: n - per_write.get(name, 0.0) * writes for name, n in counted.items()}
        )
        return cls(
            b.at - a.at,
            writes,
            spent,
            b.redis_cpu - a.redis_cpu,
            b.service_cpu - a.service_cpu,
            frames,
            lat,
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _subscribe(**ids: str) -> str:
    return orjson.dumps({"op": "subscribe", **ids}).decode()


def _cold_probe(url: str, sends: Sequence[str], answer: int) -> float:
    """One socket subscribes to what nobody follows: seconds until its answer (the feed
    message, or one status per task); infinite if it has none within ``_PROBE_WAIT``."""
    with connect(url, max_size=None) as ws:
        started = time.time()
        for text in sends:
            ws.send(text)
        deadline = started + _PROBE_WAIT
        for _ in range(answer):
            try:
                message = ws.recv(timeout=max(deadline - time.time(), 0))
            except TimeoutError:
                return math.inf
            if isinstance(message, str) and message.startswith('{"type":"error"'):
                raise RuntimeError(message)
        return time.time() - started


def _join_probes(url: str, owner: str, backend: Any, count: int) -> list[float] | None:
    """Seconds from a new task's owned SENT record to its first status on the feed
    (infinite for one that did not come within ``_PROBE_WAIT``); None if the feed's own
    subscribe had no answer within that time (no task was started then)."""
    from taskcast_celery.owners import Ownership

    ownership = Ownership(owner)
    spans = []
    with connect(url, max_size=None) as ws:
        ws.send(_subscribe(feed=owner))
        try:
            ws.recv(timeout=_PROBE_WAIT)  # the feed message
        except TimeoutError:
            return None
        for _ in range(count):
            task_id = str(uuid.uuid4())
            started = time.time()
            backend.record_sent(task_id, NAME, ownership)
            deadline = started + _PROBE_WAIT
            try:
                while task_id not in ws.recv(timeout=max(deadline - time.time(), 0)):
                    pass
            except TimeoutError:
                spans.append(math.inf)
                continue
            spans.append(time.time() - started)
    return spans


def _owned_tasks(backend: Any, owners: Sequence[str], per_owner: int) -> list[tuple[str, str]]:
    """T SENT tasks per owner, as ``owned_by`` + ``delay`` records them: (id, owner)."""
    from taskcast_celery.owners import Ownership

    tasks = []
    for owner in owners:
        ownership = Ownership(owner)
        for _ in range(per_owner):
            task_id = str(uuid.uuid4())
            backend.record_sent(task_id, NAME, ownership)
            tasks.append((task_id, owner))
    return tasks


def main() -> None:
    arguments = parser(__doc__ or "")
    arguments.add_argument("--owners", type=int, default=1000)
    arguments.add_argument("--tasks", type=int, default=10, help="unfinished tasks per owner")
    arguments.add_argument("--rate", type=float, default=10_000, help="writes a second, in all")
    arguments.add_argument("--seconds", type=float, default=10.0, help="each window")
    arguments.add_argument("--clients", type=int, nargs="+", default=[1, 3], help="per feed")
    arguments.add_argument("--rounds", type=int, default=2)
    arguments.add_argument("--probes", type=int, default=20)
    args = arguments.parse_args()
    if args.small:
        args.owners, args.rate, args.seconds = 50, 500.0, 1.5
        args.clients, args.rounds, args.probes = [1, 2], 1, 3
    per = args.tasks
    limits = {
        "TASKCAST_MAX_SUBSCRIPTIONS": str(per),
        "TASKCAST_SUBSCRIBE_RATE": str(10**6),
        "TASKCAST_SUBSCRIBE_BURST": str(10**6),
    }
    rows: list[list[str]] = []
    answer_rows: list[list[str]] = []
    probe_rows: list[list[str]] = []
    ratios: list[str] = []
    # Other processes share these cores: the load on them is part of the figures.
    load_before = os.getloadavg()

    with Stack() as stack:
        taskcast = stack.serve("taskcast", "taskcast", **limits)
        url = taskcast.url("/ws", "ws")

        from taskcast_celery.demo.celery import app as celery_app

        backend: Any = celery_app.backend
        redis = backend.client
        epoch = time.time()
        owners = [f"bench-feed:{i:05d}" for i in range(args.owners)]
        tasks = _owned_tasks(backend, owners, per)
        # Owners nobody follows, for the cold subscribes (one each: the hub forgets an
        # owner when its last socket leaves, but only once it has seen the close).
        probes = args.probes * args.rounds
        cold = {
            kind: _owned_tasks(backend, [f"bench-cold-{kind}:{i:04d}" for i in range(probes)], per)
            for kind in ("feeds", "tasks")
        }
        for task_id, owner in [*cold["feeds"], *cold["tasks"]]:
            backend.store_result(
                task_id, {"current": 0, "total": TOTAL}, "PROGRESS", request=_request(owner)
            )

        writer = _Writer(backend, tasks, args.rate, epoch)
        writer.start()
        # Every task has a PROGRESS record before anyone subscribes.
        writer.wait_for(len(tasks), timeout=len(tasks) / args.rate * 10 + 30)

        def window(followers: _Followers | None, per_write: dict[str, float]) -> _Window:
            time.sleep(1.0)  # settling after the subscribes' burst: pacing, not a wait
            if followers is not None:
                followers.start()
            before = _Counts.read(redis, taskcast, writer)
            time.sleep(args.seconds)
            after = _Counts.read(redis, taskcast, writer)
            frames, latencies = followers.end() if followers is not None else (0, [])
            return _Window.between(before, after, per_write, frames, latencies)

        alone = window(None, {})
        per_write = {name: n / alone.writes for name, n in alone.spent.items()}
        writer_commands = sum(per_write.values())
        rows.append(
            [
                "writer alone",
                "0",
                f"{alone.writes / alone.took:,.0f}",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                f"{alone.redis_cpu * 1e6 / alone.writes:.1f}",
            ]
        )

        scenarios = [("feeds", c) for c in args.clients[:1]] + [("tasks", 1)]
        scenarios += [("feeds", c) for c in args.clients[1:]]
        by_round: list[dict[tuple[str, int], _Window]] = []
        for r in range(args.rounds):
            order = scenarios if r % 2 == 0 else scenarios[::-1]
            measured: dict[tuple[str, int], _Window] = {}
            for kind, c in order:
                if kind == "feeds":
                    plans = [[_subscribe(feed=owner)] for owner in owners for _ in range(c)]
                    answer = 1
                else:
                    ids: dict[str, list[str]] = {owner: [] for owner in owners}
                    for task_id, owner in tasks:
                        ids[owner].append(task_id)
                    plans = [[_subscribe(task_id=t) for t in ids[owner]] for owner in owners]
                    answer = per
                with _Followers(url, plans, answer, epoch) as followers:
                    counted = measured[kind, c] = window(followers, per_write)
                    name = f"{kind} ({c} per owner)" if kind == "feeds" else "each task"
                    answer_rows.append(
                        [
                            str(r + 1),
                            name,
                            f"{len(plans):,}",
                            _ms(statistics.median(followers.answers)),
                            _ms(percentile(followers.answers, 99)),
                            _ms(max(followers.answers)),
                        ]
                    )
                    if c == args.clients[0]:
                        # Under the same load: one cold subscribe at a time.
                        mine = cold[kind][r * args.probes * per : (r + 1) * args.probes * per]
                        spans = []
                        for i in range(0, len(mine), per):
                            group = mine[i : i + per]
                            if kind == "feeds":
                                spans.append(_cold_probe(url, [_subscribe(feed=group[0][1])], 1))
                            else:
                                sends = [_subscribe(task_id=task_id) for task_id, _ in group]
                                spans.append(_cold_probe(url, sends, per))
                        what = "feed subscribe" if kind == "feeds" else f"{per} task subscribes"
                        probe_rows.append(_probe_row(r, f"cold {what} -> answer", spans))
                    if kind == "feeds" and c == args.clients[0]:
                        joins = _join_probes(url, f"bench-join:{r}", backend, args.probes)
                        what = "new task: SENT -> first status"
                        if joins is None:
                            what += f" (its feed's subscribe unanswered in {_PROBE_WAIT:g} s)"
                        probe_rows.append(_probe_row(r, what, joins or []))
                expected = counted.writes * c
                lat = counted.latencies or [float("nan")]
                rows.append(
                    [
                        f"{r + 1}: {name}",
                        f"{len(plans):,}",
                        f"{counted.writes / counted.took:,.0f}",
                        f"{counted.frames / counted.took:,.0f}",
                        f"{counted.frames / max(expected, 1):.3f}",
                        _ms(statistics.median(lat)),
                        _ms(percentile(lat, 99)),
                        _ms(max(lat)),
                        f"{counted.service_cpu * 1e6 / max(counted.frames, 1):.1f}",
                        f"{counted.service_cpu * 100 / counted.took:.0f}",
                        _commands(counted),
                        f"{counted.redis_cpu * 1e6 / max(counted.writes, 1):.1f}",
                    ]
                )
            by_round.append(measured)
        writer.stopped.set()
        writer.join()

    for r, measured in enumerate(by_round):
        feed, each = measured["feeds", args.clients[0]], measured["tasks", 1]
        ratios.append(
            f"round {r + 1}, feeds ({args.clients[0]} per owner) / each task: "
            f"service CPU per frame {_per_frame(feed) / _per_frame(each):.2f}, "
            f"service Redis commands per update {_per_update(feed) / _per_update(each):.2f}, "
            f"write -> receipt p50 {_p50(feed) / _p50(each):.2f}"
        )

    load_after = os.getloadavg()
    print(
        f"feeds: {args.owners:,} owners x {per} tasks, {args.rate:,.0f} writes/s asked, "
        f"{args.seconds:g} s windows ({machine()}); the writer's own Redis commands: "
        f"{writer_commands:.1f} per update; load average {load_before[0]:.1f} at the start, "
        f"{load_after[0]:.1f} (1 min), {load_after[2]:.1f} (15 min) at the end"
    )
    headers = [
        "scenario",
        "sockets",
        "writes/s",
        "frames/s",
        "delivered",
        "write -> receipt p50 ms",
        "p99 ms",
        "max ms",
        "service CPU µs/frame",
        "service CPU %",
        "service Redis commands per update (top 3)",
        "Redis CPU µs/update",
    ]
    print(table(headers, rows))
    print("\nsubscribe -> answer, every socket subscribing at once, under the load")
    print(table(["round", "scenario", "sockets", "p50 ms", "p99 ms", "max ms"], answer_rows))
    print("\none at a time, under the load")
    print(
        table(
            [
                "round",
                "probe",
                "samples",
                "p50 ms",
                "max ms (answered)",
                "over 1 s",
                f"unanswered in {_PROBE_WAIT:g} s",
            ],
            probe_rows,
        )
    )
    print()
    print("\n".join(ratios))


def _probe_row(r: int, what: str, spans: list[float]) -> list[str]:
    answered = [span for span in spans if span < math.inf]
    return [
        str(r + 1),
        what,
        str(len(spans)),
        _ms(statistics.median(spans)) if spans else "",
        _ms(max(answered)) if answered else "",
        str(sum(1.0 < span < math.inf for span in spans)),
        str(len(spans) - len(answered)),
    ]


def _per_frame(counted: _Window) -> float:
    return counted.service_cpu / max(counted.frames, 1)


def _per_update(counted: _Window) -> float:
    return counted.spent.total() / max(counted.writes, 1)


def _p50(counted: _Window) -> float:
    return statistics.median(counted.latencies) if counted.latencies else float("nan")


def _commands(counted: _Window) -> str:
    """The service's commands per update, in all and the top three by name."""
    writes = max(counted.writes, 1)
    top = ", ".join(
        f"{name} {n / writes:.3f}"
        for name, n in counted.spent.most_common(3)
        if n >= 0.001 * writes
    )
    return f"{counted.spent.total() / writes:.3f} ({top or 'none'})"


if __name__ == "__main__":
    main()
