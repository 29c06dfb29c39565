"""What every benchmark stands on: a private Redis, the processes under test, figures."""

from __future__ import annotations

import argparse
import math
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from taskcast.cli.devstack import EmbeddedRedis, Supervisor, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


class Stack:
    """A private Redis and the server processes of one benchmark run, stopped on exit."""

    def __init__(self) -> None:
        self.supervisor = Supervisor(os.environ)
        self.redis = EmbeddedRedis(self.supervisor)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = dict(os.environ, TASKCAST_REDIS_URL=self.redis.url, PYTHONPATH=path)
        for name in ("TASKCAST_BROKER_URL", "TASKCAST_RESULT_BACKEND_URL", "TASKCAST_KEY_PREFIX"):
            self.env.pop(name, None)
        # Every benchmark client comes from 127.0.0.1: the per-address limit, meant for
        # the open internet, would refuse all but the first few.
        self.env["TASKCAST_MAX_CONNECTIONS_PER_CLIENT"] = "0"
        self.env["TASKCAST_MAX_CONNECTIONS"] = "0"

    def __enter__(self) -> Stack:
        self.redis.start()
        # The driver imports the demo app (to write task states the way a worker does)
        # only after this, so it reads the same Redis as everything it starts.
        os.environ.update(TASKCAST_REDIS_URL=self.redis.url)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.supervisor.stop_all()
        self.redis.cleanup()

    def serve(self, name: str, module: str, **env: str) -> Server:
        """Start ``python -m <module> --port P`` and wait until its /healthz answers."""
        port = free_port()
        argv = [sys.executable, "-m", module, "--port", str(port)]
        if module == "taskcast":
            argv[3:3] = ["serve", "--log-level", "warning"]
        child = self.supervisor.spawn(name, argv, env={**self.env, **env})
        server = Server(name, f"127.0.0.1:{port}", child.process.pid)
        if not wait_until(lambda: server.healthy() or not child.alive(), timeout=30):
            raise RuntimeError(f"{name} did not start")
        if not child.alive():
            raise RuntimeError(f"{name} exited at start")
        return server

    def worker(self, *extra: str) -> None:
        """Start a Celery worker of taskcast's app that also knows the benchmark tasks."""
        argv = [
            sys.executable, "-m", "celery", "-A", "taskcast_celery.demo", "--quiet", "worker",
            "--include", "bench.tasks", "--loglevel", "WARNING",
            "--without-mingle", "--without-gossip", *extra,
        ]  # fmt: skip
        # Benchmarks run anywhere, root included: no need for Celery's warning about it.
        quiet = "ignore:You're running the worker with superuser privileges"
        self.supervisor.spawn("worker", argv, env={**self.env, "PYTHONWARNINGS": quiet})


class Server:
    """A server process under test."""

    def __init__(self, name: str, address: str, pid: int) -> None:
        self.name = name
        self.address = address
        self.pid = pid

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://{self.address}{path}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=0.5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU time the processes ``pids`` used so far, in seconds."""
    return sum(
        times.user + times.system for times in (psutil.Process(pid).cpu_times() for pid in pids)
    )


def write_progress(task_id: str, current: int, total: int) -> None:
    """Store a progress state exactly as a worker's ``update_state`` does.

    Import-time settings: call it only inside a ``Stack``, which points them at its Redis.
    """
    from taskcast_celery.demo.celery import app as celery_app

    celery_app.backend.store_result(task_id, {"current": current, "total": total}, "PROGRESS")


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile ``p`` (0-100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, so figures paste straight into docs/benchmarks.md."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes."""
    result = argparse.ArgumentParser(description=description)
    result.add_argument("--small", action="store_true", help="a quick smoke run")
    return result


def serve_baseline(app: Any, description: str) -> None:
    """Serve a baseline app on ``--port`` with taskcast's own uvicorn WebSocket options."""
    import uvicorn

    from taskcast.settings import Settings

    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--port", type=int, required=True)
    port = arguments.parse_args().port
    options = Settings().uvicorn_options()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", **options)


def machine() -> str:
    """One line on where the figures come from."""
    return (
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    )
