"""taskcast: run long jobs on Celery and stream their progress live.

Everything a project of yours uses is here, under one name::

    import taskcast

    taskcast.install(app)            # in your Celery module: the app becomes taskcast-ready

    @taskcast.expose                 # above @app.task: clients may start this task
    @app.task(bind=True)
    def resize(self, image_id: int) -> str:
        with taskcast.ProgressReporter(self, total=3) as progress:
            ...

    with taskcast.owned_by("user:42", tags=["report"]):          # whose tasks these are
        resize.delay(7)

    token = taskcast.sign_watch_token(task_id, secret=SECRET)  # in your web app
    api.mount("/jobs", taskcast.create_app(app))                # inside your ASGI app
    client = taskcast.Client("http://127.0.0.1:8000")          # in scripts and services

Each name is imported when first used, so a script that only uses the client needs
neither Celery nor the server's packages.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskcast.app import create_app
    from taskcast.client import Client
    from taskcast.tokens import sign_feed_token, sign_watch_token
    from taskcast_celery.expose import expose
    from taskcast_celery.install import install
    from taskcast_celery.owners import owned_by
    from taskcast_celery.progress import ProgressReporter

try:
    __version__ = version("taskcast")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Client",
    "ProgressReporter",
    "__version__",
    "create_app",
    "expose",
    "install",
    "owned_by",
    "sign_feed_token",
    "sign_watch_token",
]

# Where each public name is defined, and the extra it needs beyond the client's packages.
_EXTRA = {
    "ProgressReporter": "celery",
    "expose": "celery",
    "install": "celery",
    "owned_by": "celery",
}
_PUBLIC = {
    "Client": "taskcast.client",
    "create_app": "taskcast.app",
    "ProgressReporter": "taskcast_celery.progress",
    "expose": "taskcast_celery.expose",
    "install": "taskcast_celery.install",
    "owned_by": "taskcast_celery.owners",
    "sign_feed_token": "taskcast.tokens",
    "sign_watch_token": "taskcast.tokens",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'taskcast' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        extra = _EXTRA.get(name, "server")
        raise ModuleNotFoundError(
            f"taskcast.{name} needs {exc.name!r}, which comes with the {extra} extra: "
            f"pip install 'taskcast[{extra}]'",
            name=exc.name,
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
