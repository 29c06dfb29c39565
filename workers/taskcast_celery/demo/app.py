"""The Celery app, configured once from the environment.

Run a worker with ``celery -A taskcast_celery.demo.app worker``. Any process that imports
this module and publishes a task gets the SENT record written for it before the message leaves.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from celery import Celery, signals
from redis import Redis
from redis.commands.core import Script

from taskcast_celery import keys
from taskcast_celery.demo.config import CelerySettings
from taskcast_celery.heartbeat import Heartbeat
from taskcast_celery.states import SENT

settings = CelerySettings.from_env()

celery_app = Celery("taskcast", include=["taskcast_celery.demo.tasks"])
celery_app.conf.update(
    broker_url=settings.broker_url,
    # "class+url" selects our backend subclass while keeping the URL's connection options.
    result_backend=f"taskcast_celery.backend:TaskcastRedisBackend+{settings.result_backend_url}",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    result_expires=settings.result_expires,
    task_default_queue=settings.queue,
    # Flower and taskcast's own status both rely on these.
    task_track_started=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    # A task whose worker dies is redelivered instead of lost.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    enable_utc=True,
)
celery_app.conf.broker_transport_options = {"visibility_timeout": settings.visibility_timeout}
if settings.key_prefix:
    celery_app.conf.broker_transport_options["global_keyprefix"] = settings.key_prefix
    celery_app.conf.result_backend_transport_options = {"global_keyprefix": settings.key_prefix}


def sent_record(task_id: str, name: str | None) -> bytes:
    """The result-backend record of a task that has been published but not yet received."""
    meta: dict[str, Any] = {
        "status": SENT,
        "result": None,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
        "name": name,
    }
    return json.dumps(meta).encode()


@signals.before_task_publish.connect
def record_sent(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Write SENT for the task about to be published, unless it already has a record.

    Writing before the publish (never after) means a fast worker's STARTED or PROGRESS
    is never overwritten; NX keeps a retry's re-publish from resetting a live task.
    """
    task_id = (headers or {}).get("id")
    if not task_id:
        return
    key = keys.task_meta_key(settings.key_prefix, task_id)
    _record_sent_script()(keys=[key], args=[sent_record(task_id, sender), settings.result_expires])


# Publish only when the record was written: announcing SENT over a live task's state
# would make a watcher step backwards. One script keeps it to one atomic round trip.
_RECORD_SENT_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then
    redis.call('PUBLISH', KEYS[1], ARGV[1])
end
"""


def backend_client() -> Redis:
    """The result backend's synchronous Redis client (for workers and threads only)."""
    client: Redis = celery_app.backend.client  # type: ignore[attr-defined]
    return client


@functools.cache
def _record_sent_script() -> Script:
    return backend_client().register_script(_RECORD_SENT_LUA)


heartbeat = Heartbeat(
    backend_client, settings.key_prefix, settings.heartbeat_interval, settings.result_expires
)


@signals.task_prerun.connect
def start_heartbeat(task_id: str | None = None, **_: Any) -> None:
    """Beat for the task about to run: sent before its STARTED record is stored."""
    if task_id:
        heartbeat.start(task_id)


@signals.task_postrun.connect
def stop_heartbeat(task_id: str | None = None, **_: Any) -> None:
    """Stop beating once the task's final (or RETRY) state is stored."""
    if task_id:
        heartbeat.stop(task_id)
