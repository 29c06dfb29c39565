"""Celery's Redis result backend with the changes taskcast relies on.

``taskcast.install(app)`` makes this the app's backend, on the URL the app already has:
the records stay where and how Celery keeps them (same keys, same JSON), so every
Celery tool (``AsyncResult``, Flower, ``celery result``) reads them as before.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.utils.encoding import bytes_to_str
from redis import Redis
from redis.commands.core import Script

from taskcast_celery.keys import TASK_META
from taskcast_celery.states import FINAL_STATES, PENDING, RECEIVED, RETRY, SENT, STARTED

# Where the last progress a task reported is kept on its request, so that the final
# record can say the task had reported progress (and show it at 100 percent).
_LAST_PROGRESS = "taskcast_last_progress"
# States that are not a report of progress: Celery's own, taskcast's SENT, the final ones.
_NOT_PROGRESS = frozenset({SENT, PENDING, RECEIVED, STARTED, RETRY, *FINAL_STATES})

# A Lua function for scripts that must not act on a finished task: whether a stored
# record is final (the states of FINAL_STATES, written out once here).
IS_FINAL_LUA = (
    """
local function is_final(record)
    if not record then
        return false
    end
    local ok, meta = pcall(cjson.decode, record)
    if not ok or type(meta) ~= 'table' then
        return false
    end
    local status = meta['status']
    return """
    + " or ".join(f"status == '{state}'" for state in sorted(FINAL_STATES))
    + """
end
"""
)

# Write a state unless the task already has a final one, and announce it on the key's
# channel, in one atomic step: a GET followed by a SET (Celery's way) lets a PROGRESS
# write land between a revoke's REVOKED and the task's end, un-finishing the task.
_STORE_LUA = (
    IS_FINAL_LUA
    + """
if is_final(redis.call('GET', KEYS[1])) then
    return 0
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""
)

# SENT only where the task has no record yet, announced only when written: SENT over a
# live task's state would make a watcher step backwards, and a retry's re-publish (same
# id) must not reset the task.
_RECORD_SENT_LUA = """
local written
if tonumber(ARGV[2]) > 0 then
    written = redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX')
else
    written = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if written then
    redis.call('PUBLISH', KEYS[1], ARGV[1])
end
"""


class TaskcastRedisBackend(RedisBackend):
    """Redis result backend that does not leak subscriptions and never un-finishes a task.

    * Stock ``apply_async`` SUBSCRIBEs the producer to every task's channel and keeps it
      (celery#3808, #4707, #6963): a long-lived web process leaks one channel per task.
      That subscription is skipped; ``AsyncResult.get()`` still subscribes on demand.
    * Stock Celery only refuses to overwrite SUCCESS. Here the first final state wins:
      a revoked task that still reports progress, or finishes, does not change its record.
    * The final record carries the task's last reported progress under ``progress``.
    * ``record_sent`` writes the SENT record of a task about to be published.

    Made without a URL (``install`` names the class alone), it takes the one the app is
    configured with, read when the backend is first used rather than at ``install``.
    """

    # Set by Celery's backends (untyped there): the URL, and the records' lifetime in
    # seconds (None: for ever).
    url: str | None
    expires: int | None

    def __init__(self, app: Any, url: str | None = None, **kwargs: Any) -> None:
        if url is None:
            url = configured_url(app.conf.result_backend)
        super().__init__(app=app, url=url, **kwargs)

    @property
    def key_prefix(self) -> str:
        """The prefix of every key the app's records use (``global_keyprefix``, as
        Celery completes it), which taskcast's own keys share."""
        prefix: str = bytes_to_str(self.task_keyprefix)
        return prefix.removesuffix(TASK_META)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    @functools.cached_property
    def _store_script(self) -> Script:
        client: Redis = self.client
        return client.register_script(_STORE_LUA)

    @functools.cached_property
    def _sent_script(self) -> Script:
        client: Redis = self.client
        return client.register_script(_RECORD_SENT_LUA)

    def record_sent(self, task_id: str, name: str | None) -> None:
        """Record ``task_id`` as SENT, unless it already has a record: called before its
        message is published, so that a fast worker's state is never overwritten."""
        meta: dict[str, Any] = {
            "status": SENT,
            "result": None,
            "traceback": None,
            "children": [],
            "date_done": None,
            "task_id": task_id,
            "name": name,
        }
        key = self.get_key_for_task(task_id)
        self._sent_script(keys=[key], args=[self.encode(meta), int(self.expires or 0)])

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        if state not in _NOT_PROGRESS and request is not None and isinstance(result, dict):
            # PROGRESS, or a state of the task's own naming ("UPLOADING") with its meta.
            setattr(request, _LAST_PROGRESS, result)
        meta = self._get_result_meta(  # type: ignore[attr-defined]
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        last_progress = getattr(request, _LAST_PROGRESS, None)
        if state in FINAL_STATES and last_progress is not None:
            meta["progress"] = last_progress
        key = self.get_key_for_task(task_id)
        ttl = int(self.expires or 0)
        self.ensure(self._store_script, ([key], [self.encode(meta), ttl]))
        return result


class TaskcastSentinelBackend(TaskcastRedisBackend, SentinelBackend):
    """The same, on a Redis that Sentinels watch (``sentinel://host:26379;sentinel://...``
    with ``result_backend_transport_options["master_name"]``): every write goes to the
    master the Sentinels name, found again after a failover."""


def configured_url(result_backend: Any) -> str:
    """The Redis URL of an app's ``result_backend`` setting, without any ``class+``."""
    text = str(result_backend or "")
    scheme, _, _ = text.partition("://")
    if "+" in scheme:
        text = text.split("+", 1)[1]
    return text
