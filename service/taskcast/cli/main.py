"""The ``taskcast`` command: ``dev`` (everything on one machine), ``serve``, ``worker``,
and the clients ``submit``, ``submit-group`` and ``watch``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from types import FrameType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from taskcast.catalog import TASKS
from taskcast.cli import terminal
from taskcast.cli.devstack import (
    EmbeddedRedis,
    Supervisor,
    describe_redis,
    redis_answers,
    wait_until,
)

APP_FACTORY = "taskcast.app:create_app"
DEFAULT_URL = "http://127.0.0.1:8000"
# Task parameters are kept apart from the command's own options under this prefix.
_PARAM = "param:"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run_dev(args: argparse.Namespace) -> int:
    """Run Redis (found or embedded), a Celery worker and the web service until stopped."""
    if args.flower and importlib.util.find_spec("flower") is None:
        print(
            "taskcast dev: --flower needs Flower, which is not installed: "
            "pip install 'taskcast[flower]'",
            file=sys.stderr,
            flush=True,
        )
        return 2
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
            [python, "-m", "celery", "-A", "taskcast_celery.demo.app", "worker",
             "--loglevel", "INFO",
             "--concurrency", str(args.concurrency),
             "--hostname", f"taskcast-dev-{os.getpid()}@%h"],
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
                [python, "-m", "celery", "-A", "taskcast_celery.demo.app", "flower",
                 f"--address={args.host}", f"--port={args.flower_port}", "--logging=warning"],
            )  # fmt: skip
            flower_url = f"http://{args.host}:{args.flower_port}"
            health["flower"] = f"{flower_url}/healthcheck"
            flower = f"  Flower     {flower_url}\n"

        started = wait_until(
            lambda: stop.is_set() or supervisor.first_exited() is not None
            or all(_healthy(url) for url in health.values()),
            timeout=30,
        )  # fmt: skip
        if not stop.is_set() and (not started or supervisor.first_exited() is not None):
            exited = supervisor.first_exited()
            silent = [name for name, url in health.items() if not _healthy(url)]
            who = exited.name if exited is not None else " and ".join(silent) or "web"
            print(f"taskcast dev: {who} did not start", file=sys.stderr, flush=True)
            return 1
        if not stop.is_set():
            if supervisor.env.get("MAILTRAP_API_TOKEN"):
                mail = "through Mailtrap (MAILTRAP_API_TOKEN is set)"
            else:
                mail = f"{base}/dev/outbox  (no MAILTRAP_API_TOKEN: nothing is sent)"
            print(
                f"taskcast dev is ready\n"
                f"  Demo page  {base}/\n"
                f"  API        {base}/tasks/{{name}}  (OpenAPI: {base}/openapi.json)\n"
                f"  WebSocket  ws://{args.host}:{args.port}/ws\n"
                f"  E-mail     {mail}\n"
                f"  Redis      {describe_redis(redis_url)} ({where})\n"
                f"{flower}"
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

    from taskcast.cli.logs import log_config
    from taskcast.settings import Settings

    settings = Settings.from_env()
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        # Applied by every worker process: uvicorn's loggers and taskcast's alike.
        log_config=log_config(settings.log_format, args.log_level),
        **settings.uvicorn_options(),
    )
    return 0


def run_worker(extra: list[str]) -> int:
    """Run a Celery worker for taskcast's app; extra arguments go to ``celery worker``."""
    from taskcast_celery.demo.app import celery_app

    celery_app.worker_main(["worker", *extra])
    return 0


def run_watch(args: argparse.Namespace) -> int:
    """Show a task's (or with --group a group's) progress live until it ends; the exit
    code says how it ended."""
    group = args.group is not None
    watched_id = args.group if group else args.task_id
    return terminal.run(
        lambda console: terminal.watch_task(
            console, args.url, watched_id, args.give_up, args.token, args.api_key, group
        )
    )


def _params(args: argparse.Namespace) -> dict[str, Any]:
    """The task parameters given on the command line (the others take their defaults)."""
    return {
        key.removeprefix(_PARAM): value
        for key, value in vars(args).items()
        if key.startswith(_PARAM)
    }


def run_submit(args: argparse.Namespace) -> int:
    """Queue a task through the REST API, print its id and links, and with --watch follow it."""
    params = _params(args)
    return terminal.run(
        lambda console: terminal.submit_task(
            console, args.url, args.task, params, args.watch, args.give_up, args.api_key
        )
    )


def run_submit_group(args: argparse.Namespace) -> int:
    """Queue --count copies of a task as one group, print its id, links and members' ids,
    and with --watch follow the group."""
    params = _params(args)
    return terminal.run(
        lambda console: terminal.submit_task_group(
            console, args.url, args.task, args.count, params, args.watch, args.give_up, args.api_key
        )
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def _given_type(annotation: Any) -> Any:
    """The type of a parameter's value when it is given: ``int`` for an optional
    ``Annotated[int, ...] | None`` (such as progress's fail_at)."""
    if get_origin(annotation) in (Union, UnionType):
        given = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(given) == 1:
            annotation = given[0]
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _add_param(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    """One task parameter as an option typed from the catalog's model."""
    kind: Any = str
    metavar = "TEXT"
    annotation = _given_type(field.annotation)
    if annotation in (int, float):
        kind, metavar = annotation, "INT" if annotation is int else "NUMBER"
    elif get_origin(annotation) is dict:
        kind, metavar = _json_object, "JSON"
    required = field.is_required()
    text = field.description or ""
    parser.add_argument(
        "--" + name.replace("_", "-"),
        dest=_PARAM + name,
        type=kind,
        metavar=metavar,
        required=required,
        # Unset options are not sent: the service applies its own defaults.
        default=argparse.SUPPRESS,
        # A None default is the parameter's absence, which the text already explains.
        help=text if required or field.default is None else f"{text} (default: {field.default})",
    )


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("TASKCAST_URL", DEFAULT_URL),
        help="the service (default: $TASKCAST_URL or %(default)s)",
    )
    parser.add_argument(
        "--give-up",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to keep reconnecting while the service is unreachable (default: 30)",
    )
    # Credentials default to the environment, where other users cannot read them (a
    # command line shows in ps); empty means none.
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TASKCAST_API_KEY") or None,
        metavar="KEY",
        help="API key, where the service wants one (default: $TASKCAST_API_KEY)",
    )


def _add_task_parsers(
    command: argparse.ArgumentParser, watch_help: str
) -> list[argparse.ArgumentParser]:
    """One sub-command per task of the catalog under ``command``, each with that task's
    parameters as typed options, ``--watch`` and the client options; returned so that
    ``command`` can add options of its own."""
    tasks = command.add_subparsers(dest="task", metavar="NAME", required=True)
    parsers = []
    for name, spec in TASKS.items():
        task = tasks.add_parser(
            name, help=spec.summary, description=spec.summary, epilog=terminal.EXIT_HELP
        )
        for field_name, field in spec.params.model_fields.items():
            _add_param(task, field_name, field)
        task.add_argument("--watch", action="store_true", help=watch_help)
        _add_client_options(task)
        parsers.append(task)
    return parsers


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
    dev.add_argument(
        "--flower",
        action="store_true",
        help="also run Flower, Celery's dashboard (extra: taskcast[flower])",
    )
    dev.add_argument("--flower-port", type=int, default=5555, help="port for Flower")

    serve = commands.add_parser("serve", help="serve the web service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="service processes")
    serve.add_argument("--log-level", default="info", help="uvicorn log level")

    commands.add_parser("worker", help="run a Celery worker (extra arguments go to celery worker)")

    exits = terminal.EXIT_HELP
    watch = commands.add_parser(
        "watch", help="show a task's (or a group's) progress live until it ends", epilog=exits
    )
    watched = watch.add_mutually_exclusive_group(required=True)
    watched.add_argument("task_id", metavar="TASK_ID", nargs="?", help="the task to follow")
    watched.add_argument(
        "--group", metavar="GROUP_ID", help="follow this group (from submit-group) instead"
    )
    watch.add_argument(
        "--token",
        default=os.environ.get("TASKCAST_TOKEN") or None,
        help="the task's (or group's) watch token, from its dispatch (default: $TASKCAST_TOKEN)",
    )
    _add_client_options(watch)

    submit = commands.add_parser("submit", help="start a task and print its id", epilog=exits)
    _add_task_parsers(submit, "then show its progress live")
    submit_group = commands.add_parser(
        "submit-group", help="start copies of a task as one group and print its id", epilog=exits
    )
    for task in _add_task_parsers(submit_group, "then show the group's progress live"):
        task.add_argument(
            "--count",
            type=int,
            required=True,
            metavar="N",
            help="how many copies of the task to start, each with the parameters given",
        )
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
    if args.command == "watch":
        return run_watch(args)
    if args.command == "submit":
        return run_submit(args)
    if args.command == "submit-group":
        return run_submit_group(args)
    return run_serve(args)


if __name__ == "__main__":
    sys.exit(main())
