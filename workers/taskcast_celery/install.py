"""``taskcast.install(app)``: what makes any Celery app taskcast-ready.

Called once, in the module that creates and configures the app (the one ``celery -A``
names), so that every process importing the app gets it: the producers that call
``.delay()``, the workers, and the taskcast service. It changes that one app and no
other: it never makes the app Celery's current or default one, and what it connects
to Celery's signals acts only on that app's tasks.

What it does to the app:

* **SENT before publish.** Every task the app publishes (``.delay()``, ``apply_async``,
  groups, chords, retries, beat) is recorded as SENT in the result backend before its
  message leaves, so an id with no record is unknown, never "pending".
* **Its result backend becomes** ``TaskcastRedisBackend`` on the same URL: the first
  final state wins, the last progress is kept in the final record, and no producer
  SUBSCRIBEs per ``.delay()``.
* **Heartbeats**: while a task of the app runs, its worker process beats for it, so
  the service can tell a dead worker's task (stalled) from a slow one.
* **Cancelled stays cancelled**: a worker that receives a task the service cancelled
  before that worker started (so it never heard the revoke) skips it.
* **Webhooks**: the task ``taskcast.webhook`` delivers an owned task's final status to
  its webhook (``taskcast_celery.webhooks``, whose ``TASKCAST_WEBHOOK_*`` settings are read
  here).
* ``task_track_started`` (the STARTED state) and the events Flower shows
  (``worker_send_task_events``, ``task_send_sent_event``) are turned on.
* **A broker failover cancels nothing**: ``worker_cancel_long_running_tasks_on_connection_loss``
  is False unless the app chose (Celery 6 makes True the default), and its workers log
  Celery's harmless gossip error on a lost broker as one line (see ``_QuietGossipClose``).
"""

from __future__ import annotations

import functools
import logging
import warnings
import weakref
from collections.abc import Callable
from contextvars import Token
from typing import Any, cast

from celery import Celery, signals
from celery.app.amqp import AMQP
from celery.exceptions import CPendingDeprecationWarning
from kombu.utils.imports import symbol_by_name
from kombu.utils.url import maybe_sanitize_url
from pydantic import PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskcast_celery import keys, owners, webhooks
from taskcast_celery.backend import (
    DEFAULT_HISTORY_SECONDS,
    TaskcastRedisBackend,
    TaskcastSentinelBackend,
)
from taskcast_celery.heartbeat import Heartbeat

logger = logging.getLogger(__name__)

# URL schemes of Celery's plain Redis result backend (``socket`` is a Unix socket), and
# of its Sentinel one.
_REDIS_SCHEMES = frozenset({"redis", "rediss", "socket"})
_SENTINEL_SCHEME = "sentinel"
_BACKEND = f"{TaskcastRedisBackend.__module__}:{TaskcastRedisBackend.__name__}"
_SENTINEL_BACKEND = f"{TaskcastSentinelBackend.__module__}:{TaskcastSentinelBackend.__name__}"
# What a worker does with its running tasks when it loses the broker. True cancels every
# running task that acknowledges late and lets the broker deliver it again: on a Sentinel
# failover or a broker restart, every running task would start over, its progress going
# back to 0 under its watchers' eyes (and its side effects repeated). Celery 5 defaults to
# False but warns at every connection loss that Celery 6 will default to True.
_CANCEL_ON_LOSS = "worker_cancel_long_running_tasks_on_connection_loss"
# The first words of that warning (celery.worker.consumer.consumer.CANCEL_TASKS_BY_DEFAULT).
_CANCEL_ON_LOSS_NOTICE = r"\s*In Celery 5\.1 we introduced an optional breaking change"


class InstallError(Exception):
    """The app cannot be made taskcast-ready as it is configured; the message names the
    setting to change."""


class InstallSettings(BaseSettings):
    """What ``install`` reads from the environment when not given as arguments."""

    model_config = SettingsConfigDict(env_prefix="TASKCAST_", env_ignore_empty=True)

    # Seconds between a running task's heartbeats; the service calls a task stalled
    # after TASKCAST_STALL_AFTER seconds without one.
    heartbeat_interval: PositiveFloat = 5.0
    # Seconds a worker keeps trying to store a task's state while Redis is unreachable
    # (a restart, a failover) before the write, and so the task, fails. Celery's own
    # default gives up after about 20 s.
    redis_retry_seconds: PositiveFloat = 300.0
    # Seconds an owned task stays in its owner's history (taskcast.owned_by), from when
    # it was sent: a week.
    history_seconds: PositiveInt = DEFAULT_HISTORY_SECONDS


class Installation:
    """What ``install`` set up for one app; the service reads it back from the app."""

    def __init__(self, app: Celery, heartbeat_interval: float) -> None:
        # Weak: this object lives as long as the app (see _INSTALLED), and must not be
        # what keeps it alive.
        self._app = weakref.ref(app)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat = Heartbeat(self._backend, heartbeat_interval)
        # The ownership each running task was entered with, by task id (task_prerun to
        # task_postrun, on the thread that runs it).
        self._ownership: dict[str, Token[owners.Ownership | None]] = {}
        # Bound methods, held weakly by Celery's signals: connected while this lives.
        signals.task_prerun.connect(self._task_starts)
        signals.task_postrun.connect(self._task_ended)
        signals.task_received.connect(self._task_received)
        signals.celeryd_after_setup.connect(self._worker_set_up)

    def _backend(self) -> TaskcastRedisBackend:
        app = self._app()
        assert app is not None, "the app was collected"
        return cast("TaskcastRedisBackend", app.backend)

    def _ours(self, app: Any) -> bool:
        return app is not None and app is self._app()

    def _task_starts(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        # Beats before the task's STARTED record is stored (task_prerun comes first).
        if task_id and self._ours(getattr(sender, "app", None)):
            self.heartbeat.start(task_id)
            # The task runs as its owner (from its message's headers): what it publishes
            # (a chain's next step, a chord's callback) is the owner's too.
            request = getattr(sender, "request", None)
            self._ownership[task_id] = owners.adopt(owners.from_request(request))

    def _task_ended(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        # After the task's final (or RETRY) state is stored.
        if task_id and self._ours(getattr(sender, "app", None)):
            self.heartbeat.stop(task_id)
            token = self._ownership.pop(task_id, None)
            if token is not None:
                owners.release(token)

    def _task_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        """A worker of the app got a task: skip it if it was cancelled meanwhile.

        Celery's revoke broadcast reaches only the workers alive when it is sent; the
        service also leaves a marker key, which a worker started later finds here. The
        id joins the worker's own revoked set, so Celery itself skips the task (and
        acknowledges it) before running it, as for any revoked task.
        """
        if request is None or not self._ours(getattr(sender, "app", None)):
            return
        backend = self._backend()
        try:
            cancelled = backend.client.exists(keys.revoked_key(backend.key_prefix, request.id))
        except Exception as exc:  # Redis unreachable: run it, as Celery alone would
            logger.warning("could not check whether %s was cancelled: %r", request.id, exc)
            return
        if cancelled:
            sender.controller.state.revoked.add(request.id)

    def _worker_set_up(self, sender: Any = None, instance: Any = None, **_: Any) -> None:
        """A worker of the app has set its logging up (``celeryd_after_setup``): quiet
        what Celery logs on a lost broker that says nothing to act on.

        Here, and not in ``install``: these are the worker process's own logging and
        warnings, and Celery's logging setup (just done) resets the warnings filters.
        """
        app = getattr(instance, "app", None)
        if app is None or not self._ours(app):
            return
        if not app.conf[_CANCEL_ON_LOSS]:
            # Celery warns at every connection loss that the default changes in Celery 6,
            # whatever the app set: the app's choice is made, the notice is moot.
            warnings.filterwarnings(
                "ignore", message=_CANCEL_ON_LOSS_NOTICE, category=CPendingDeprecationWarning
            )
        bootsteps = logging.getLogger("celery.bootsteps")
        if not any(isinstance(f, _QuietGossipClose) for f in bootsteps.filters):
            bootsteps.addFilter(_QuietGossipClose())


class _QuietGossipClose(logging.Filter):
    """Celery's gossip error on a lost broker, as one WARNING line without a traceback.

    When the consumer loses the broker, Celery (5.5 to 5.7 at least) sets its
    ``connection`` to None (``Consumer.on_connection_error_after_connected``) before
    restarting its bootsteps; Gossip, a ``ConsumerStep``, then closes its channel with
    ``ignore_errors(c.connection, channel.close)``. The close fails (the broker is gone)
    and kombu's ``ignore_errors`` looks up ``None.connection_errors`` to decide whether to
    ignore it: an AttributeError, which ``Blueprint.send_all`` logs as "Error on
    restarting Gossip" with a traceback, once per reconnection attempt (21 in one Sentinel
    failover). The channel belonged to the dead connection and is dropped either way;
    gossip starts again on the new connection. Older kombu failed the same close on
    ``None.hostname`` (celery/kombu#582).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.levelno >= logging.ERROR
            and isinstance(args, tuple)
            and len(args) == 3
            and args[1] == "Gossip"
            and isinstance(args[2], AttributeError)
            and "'NoneType' object has no attribute" in str(args[2])
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "gossip's channel went with the lost broker (%s %s: %r); it reconnects"
            record.exc_info = record.exc_text = None
        return True


# Every installed app, and what was installed for it.
_INSTALLED: weakref.WeakKeyDictionary[Celery, Installation] = weakref.WeakKeyDictionary()


def install(
    app: Celery,
    *,
    heartbeat_interval: float | None = None,
    redis_retry_seconds: float | None = None,
    history_seconds: int | None = None,
) -> Celery:
    """Make ``app`` taskcast-ready, and return it.

    Call it once, where the app is created and configured, before the app sends any
    task: ``taskcast.install(app)``. Its result backend must be Redis and store JSON
    (``InstallError`` says otherwise, naming the setting). ``heartbeat_interval``
    (seconds, default ``TASKCAST_HEARTBEAT_INTERVAL`` or 5) is how often a running
    task's worker beats; ``redis_retry_seconds`` (default ``TASKCAST_REDIS_RETRY_SECONDS``
    or 300) how long a worker keeps trying to store a state while Redis is unreachable,
    unless the app's ``result_backend_transport_options`` has a ``retry_policy`` of its
    own; ``history_seconds`` (default ``TASKCAST_HISTORY_SECONDS`` or a week) how long an
    owned task stays in its owner's history. Calling it again on the same app changes
    nothing.
    """
    if app in _INSTALLED:
        return app
    settings = InstallSettings()
    interval = heartbeat_interval or settings.heartbeat_interval
    if isinstance(app.backend_cls, str) and "://" in app.backend_cls:
        # Celery(backend="redis://...") style: keep the URL where the backend reads it.
        app.conf.update(result_backend=app.backend_cls)
    check_app(app)
    app.conf.update(
        task_track_started=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    # Read by the backend wherever the app runs: producers list a task, workers end it.
    app.conf.taskcast_history_seconds = history_seconds or settings.history_seconds
    if not _chosen(app, _CANCEL_ON_LOSS):
        # Celery 6's default would cancel and redeliver every running task on a broker
        # failover (see _CANCEL_ON_LOSS); an app that chose keeps its choice.
        app.conf[_CANCEL_ON_LOSS] = False
    options = dict(app.conf.result_backend_transport_options or {})
    if "retry_policy" not in options:
        # Through a Redis restart rather than failing the tasks running meanwhile: a
        # state write is tried again every second at most (a Sentinel failover takes 2 to
        # 3 s), for that long in all.
        options["retry_policy"] = {
            "max_retries": None,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1.0,
            "timeout": redis_retry_seconds or settings.redis_retry_seconds,
        }
        app.conf.result_backend_transport_options = options
    sentinel = str(app.conf.result_backend).startswith(f"{_SENTINEL_SCHEME}://")
    app.backend_cls = _SENTINEL_BACKEND if sentinel else _BACKEND
    # A backend built before now would be Celery's own: the next use builds ours.
    app._backend_cache = None  # type: ignore[attr-defined]
    vars(app._local).pop("backend", None)  # type: ignore[attr-defined]
    if "amqp" in vars(app):
        _record_sent_first(app.amqp)
    else:
        # Any callable will do where Celery expects the class: it is called with app=.
        app.amqp_cls = functools.partial(_amqp_recording_sent, app.amqp_cls)  # type: ignore[assignment]
    webhooks.register(app)
    _INSTALLED[app] = Installation(app, interval)
    return app


def _chosen(app: Celery, key: str) -> bool:
    """Whether the app's configuration sets ``key`` itself, rather than leaving Celery's
    default."""
    conf: Any = app.conf
    # Celery's settings are a chain of maps: what was set on app.conf, then the
    # configuration source (config_from_object), Celery's defaults last. _to_keys gives
    # every name the key may be set under (an old-style CELERYD_ one, a namespace's).
    names = conf._to_keys(key)
    return any(name in mapping for mapping in conf.maps[:-1] for name in names)


def installation(app: Celery) -> Installation | None:
    """What ``install`` set up for ``app``; None when it was never installed."""
    return _INSTALLED.get(app)


def check_app(app: Celery) -> None:
    """Raise ``InstallError`` unless ``app`` keeps JSON records in a Redis result backend."""
    configured = app.conf.result_backend
    if isinstance(configured, str):
        scheme, _, _ = configured.partition("://")
        backend_class = scheme.split("+", 1)[0] if "+" in scheme else None
        redis = (
            backend_class is None and scheme in (*_REDIS_SCHEMES, _SENTINEL_SCHEME)
        ) or backend_class in (_BACKEND, _SENTINEL_BACKEND)
    else:
        redis = False
    if configured is None:
        raise InstallError(
            "taskcast needs a Redis result backend, and the app's result_backend is None, "
            "not set yet: call taskcast.install(app) after configuring the app "
            "(config_from_object, conf.update or Celery(backend=...)), with "
            "result_backend a redis://, rediss://, socket:// or sentinel:// URL"
        )
    if not redis:
        # As written, unless it holds a password.
        shown = (
            maybe_sanitize_url(configured)
            if isinstance(configured, str) and "@" in configured
            else configured
        )
        raise InstallError(
            f"taskcast needs a Redis result backend, and the app's result_backend is "
            f"{shown!r}: set result_backend to a redis://, rediss://, socket:// or "
            "sentinel:// URL (the broker may stay as it is)"
        )
    options = app.conf.result_backend_transport_options or {}
    if str(configured).startswith(f"{_SENTINEL_SCHEME}://") and not options.get("master_name"):
        raise InstallError(
            "the app's result backend is a list of Sentinels: name the master they watch "
            "in result_backend_transport_options['master_name'] (for the demo app: "
            "TASKCAST_REDIS_SENTINEL_MASTER)"
        )
    serializer = app.conf.result_serializer
    if serializer != "json":
        raise InstallError(
            f"taskcast reads task records as JSON, and the app's result_serializer is "
            f"{serializer!r}: set result_serializer = 'json' (task_serializer and "
            "accept_content may stay as they are)"
        )
    if app.conf.result_compression:
        raise InstallError(
            "taskcast reads task records as plain JSON, and the app compresses them: "
            "unset result_compression"
        )


# -- SENT before publish ------------------------------------------------------------


def _amqp_recording_sent(base: str | type[AMQP] | None, app: Celery) -> AMQP:
    """The app's own AMQP class, made as Celery would, sending through ``_SentFirst``."""
    amqp_class: type[AMQP] = base if isinstance(base, type) else symbol_by_name(str(base))
    amqp = amqp_class(app=app)
    _record_sent_first(amqp)
    return amqp


def _record_sent_first(amqp: AMQP) -> None:
    # Where the class's cached property keeps its value: every publish of this app, and
    # only of this app, goes through it.
    vars(amqp)["send_task_message"] = _SentFirst(amqp, vars(amqp).get("send_task_message"))


class _SentFirst:
    """An app's ``send_task_message`` that writes the task's SENT record first.

    Writing before the publish (never after) means a fast worker's STARTED or PROGRESS
    is never overwritten; and a SENT record that cannot be written stops the publish
    (the error reaches the caller), so no task runs that nobody could follow.
    """

    def __init__(self, amqp: AMQP, send: Callable[..., Any] | None) -> None:
        self._amqp = amqp
        self._send = send

    def __call__(self, producer: Any, name: str, message: Any, **options: Any) -> Any:
        if self._send is None:
            # Made at the first publish, as Celery makes it: from the app's settings then.
            self._send = type(self._amqp).send_task_message.func(self._amqp)  # type: ignore[attr-defined]
        task_id = message.properties["correlation_id"]
        backend = cast("TaskcastRedisBackend", self._amqp.app.backend)
        # Inside ``taskcast.owned_by`` (or a task that runs as its owner), the message
        # carries the owner to the worker, and the SENT record to every watcher.
        ownership = owners.current()
        if ownership is not None:
            message.headers.update(ownership.headers())
        backend.record_sent(task_id, name, ownership)
        return self._send(producer, name, message, **options)
