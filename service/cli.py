"""The ``taskcast`` command: ``dev`` (everything on one machine), ``serve``, ``worker``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from types import FrameType

from service.devstack import (
    EmbeddedRedis,
    Supervisor,
    describe_redis,
    redis_answers,
    wait_until,
)

APP_FACTORY = "service.app:create_app"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run_dev(args: argparse.Namespace) -> int:
    """Run Redis (found or embedded), a Celery worker and the web service until stopped."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    supervisor = Supervisor(os.environ)
    embedded: EmbeddedRedis | None = None
    try:
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
        # Dev mode: without a Mailtrap token, e-mail goes to the dev outbox.
        supervisor.env["TASKCAST_DEV"] = "1"

        python = sys.executable
        supervisor.spawn(
            "worker",
            [python, "-m", "celery", "-A", "workers.app", "worker", "--loglevel", "INFO",
             "--concurrency", str(args.concurrency),
             "--hostname", f"taskcast-dev-{os.getpid()}@%h"],
            # Warm shutdown first; a cold one if a long task keeps it waiting.
            stop_signals=(signal.SIGTERM, signal.SIGQUIT),
        )  # fmt: skip
        supervisor.spawn(
            "web",
            [python, "-m", "service.cli", "serve",
             "--host", args.host, "--port", str(args.port), "--log-level", "warning"],
        )  # fmt: skip

        base = f"http://{args.host}:{args.port}"
        started = wait_until(
            lambda: stop.is_set() or supervisor.first_exited() is not None
            or _healthy(f"{base}/healthz"),
            timeout=30,
        )  # fmt: skip
        if not stop.is_set() and (not started or supervisor.first_exited() is not None):
            print("taskcast dev: the web service did not start", file=sys.stderr, flush=True)
            return 1
        if not stop.is_set():
            if supervisor.env.get("MAILTRAP_API_TOKEN"):
                mail = "through Mailtrap (MAILTRAP_API_TOKEN is set)"
            else:
                mail = f"{base}/dev/outbox  (no MAILTRAP_API_TOKEN: nothing is sent)"
            print(
                f"taskcast dev is ready\n"
                f"  API        {base}/tasks/{{name}}  (OpenAPI: {base}/openapi.json)\n"
                f"  WebSocket  ws://{args.host}:{args.port}/ws\n"
                f"  E-mail     {mail}\n"
                f"  Redis      {describe_redis(redis_url)} ({where})\n"
                f"Press Ctrl-C to stop.",
                flush=True,
            )
        while not stop.wait(0.2):
            exited = supervisor.first_exited()
            if exited is not None:
                print(f"taskcast dev: {exited.name} exited; stopping", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        supervisor.stop_all()
        if embedded is not None:
            embedded.cleanup()


def run_serve(args: argparse.Namespace) -> int:
    """Serve the web service (production entry point; workers run separately)."""
    import uvicorn

    from service.settings import Settings

    settings = Settings.from_env()
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        **settings.uvicorn_options(),
    )
    return 0


def run_worker(extra: list[str]) -> int:
    """Run a Celery worker for taskcast's app; extra arguments go to ``celery worker``."""
    from workers.app import celery_app

    celery_app.worker_main(["worker", *extra])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskcast", description="Run long jobs on Celery and stream their progress live."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run Redis, a worker and the web service locally")
    dev.add_argument("--host", default="127.0.0.1", help="address to serve on")
    dev.add_argument("--port", type=int, default=8000, help="port to serve on")
    dev.add_argument(
        "--local-redis",
        default="redis://127.0.0.1:6379/0",
        help="Redis to use if it answers (when TASKCAST_REDIS_URL is unset); "
        "otherwise an embedded one is started",
    )
    dev.add_argument("--concurrency", type=int, default=2, help="worker processes")

    serve = commands.add_parser("serve", help="serve the web service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="service processes")
    serve.add_argument("--log-level", default="info", help="uvicorn log level")

    commands.add_parser("worker", help="run a Celery worker (extra arguments go to celery worker)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "worker":
        return run_worker(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "dev":
        return run_dev(args)
    return run_serve(args)


if __name__ == "__main__":
    sys.exit(main())
