"""The Celery app the service serves, loaded the way ``celery -A`` loads one.

Whatever the service knows of Celery it learns here, from that app alone: where its
records are (the result backend's URL and key prefix), how long they live, how often
its workers beat, and which of its tasks clients may start. The demo app is loaded the
same way as any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from celery import Celery
from celery.app.utils import find_app
from celery.utils.imports import import_from_cwd
from kombu.utils.url import maybe_sanitize_url

from taskcast_celery.backend import TaskcastRedisBackend, TaskcastSentinelBackend
from taskcast_celery.expose import ExposeError, Exposure, exposed_tasks
from taskcast_celery.install import InstallError, check_app, installation


class AppError(Exception):
    """The app cannot be served; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ServedApp:
    """A taskcast-ready Celery app and what the service reads from it."""

    celery: Celery
    # How it was named (``proj.celery:app``), for messages.
    name: str
    # Where its records are: the result backend's Redis URL (or its Sentinels', with the
    # name of their master and their own options), and its key prefix.
    redis_url: str
    key_prefix: str
    # Seconds its records live (0: for ever).
    result_expires: int
    # Seconds between its workers' heartbeats for a running task.
    heartbeat_interval: float
    # Its exposed tasks, by the name clients use.
    tasks: dict[str, Exposure]
    sentinel_master: str | None = None
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> TaskcastRedisBackend:
        """The app's own (synchronous) result backend: for worker threads only."""
        return cast("TaskcastRedisBackend", self.celery.backend)

    def redacted_url(self) -> str:
        """The Redis URL (each Sentinel's) without its password, for banners and logs."""
        return ";".join(str(maybe_sanitize_url(part)) for part in self.redis_url.split(";"))


def load_app(name: str) -> ServedApp:
    """Load the app ``name`` (``proj``, ``proj.celery``, ``proj.celery:app``) as a worker
    would, with the modules it includes, and check that it is taskcast-ready."""
    try:
        found = find_app(name)
    except Exception as exc:
        raise AppError(f"cannot load the Celery app {name!r}: {_why_not(name, exc)}") from exc
    if not isinstance(found, Celery):
        raise AppError(f"{name!r} is a {type(found).__name__}, not a Celery app")
    return serve_app(found, name)


def _why_not(name: str, exc: Exception) -> str:
    """Why ``find_app(name)`` failed, in words. For ``module:attribute`` whose module has
    no such attribute, Celery's ``find_app`` retries the whole name as a module and says
    ``No module named 'module:attribute'``, hiding that the module itself was found."""
    module_name, colon, attribute = name.partition(":")
    if colon and isinstance(exc, ModuleNotFoundError) and exc.name == name:
        try:
            # As find_app imports it: from the current directory first, as celery -A does.
            module = import_from_cwd(module_name)
        except Exception:
            return repr(exc)
        if not hasattr(module, attribute):
            return f"module {module_name!r} has no attribute {attribute!r}"
    return repr(exc)


def serve_app(app: Celery, name: str) -> ServedApp:
    """Check a Celery app and read what the service needs of it."""
    installed = installation(app)
    if installed is None:
        raise AppError(
            f"the Celery app {name!r} is not taskcast-ready: call taskcast.install(app) "
            "where it is created (its workers need it too)"
        )
    try:
        check_app(app)
        # As a worker does at start: the modules of ``include``/``imports`` and the
        # autodiscovered ones define the tasks, and with them what is exposed.
        app.loader.import_default_modules()
        app.finalize(auto=True)
        tasks = exposed_tasks(app)
    except (InstallError, ExposeError) as exc:
        raise AppError(f"the Celery app {name!r}: {exc}") from exc
    backend = cast("TaskcastRedisBackend", app.backend)
    options = app.conf.result_backend_transport_options or {}
    sentinel = isinstance(backend, TaskcastSentinelBackend)
    return ServedApp(
        celery=app,
        name=name,
        redis_url=_redis_url(backend.url),
        key_prefix=backend.key_prefix,
        result_expires=int(backend.expires or 0),
        heartbeat_interval=installed.heartbeat_interval,
        tasks=tasks,
        # As the app's own backend reads them (Celery's convention).
        sentinel_master=options["master_name"] if sentinel else None,
        sentinel_options=dict(options.get("sentinel_kwargs") or {}) if sentinel else {},
    )


def _redis_url(url: str | None) -> str:
    """The backend's URL as redis-py reads it (Celery's ``socket://`` is ``unix://``)."""
    text = url or "redis://localhost:6379/0"
    if text.startswith("socket://"):
        return "unix://" + text.removeprefix("socket://")
    return text
