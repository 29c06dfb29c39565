"""Celery's Redis result backend with the changes taskcast relies on.

``taskcast.install(app)`` makes this the app's backend, on the URL the app already has:
the records stay where and how Celery keeps them (same keys, same JSON), so every
Celery tool (``AsyncResult``, Flower, ``celery result``) reads them as before.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.utils.encoding import bytes_to_str
from redis import Redis
from redis.commands.core import Script

from taskcast_celery import keys, owners, webhooks
from taskcast_celery.keys import TASK_META
from taskcast_celery.states import (
    FINAL_STATES,
    PENDING,
    RECEIVED,
    RETRY,
    SENT,
    STARTED,
    SUCCESS,
)

# Where the last progress a task reported is kept on its request, so that the final
# record can say the task had reported progress (and show it at 100 percent).
_LAST_PROGRESS = "taskcast_last_progress"
# States that are not a report of progress: Celery's own, taskcast's SENT, the final ones.
_NOT_PROGRESS = frozenset({SENT, PENDING, RECEIVED, STARTED, RETRY, *FINAL_STATES})

# A Lua function for scripts that must not act on a finished task: whether a stored
# record is final (the states of FINAL_STATES, written out once here).
IS_FINAL_LUA = (
    """
local function final_status(status)
    return """
    + " or ".join(f"status == '{state}'" for state in sorted(FINAL_STATES))
    + """
end
local function is_final(record)
    if not record then
        return false
    end
    local ok, meta = pcall(cjson.decode, record)
    if not ok or type(meta) ~= 'table' then
        return false
    end
    return final_status(meta['status'])
end
"""
)

# Lua: Redis's clock in ms, and the members of an owner's list (keys.history_member).
_CLOCK_LUA = """
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function member(ms, task_id)
    return string.format('%013d', 10000000000000 - ms) .. ':' .. task_id
end
"""

# Write a state unless the task already has a final one, and announce it on the key's
# channel, in one atomic step: a GET followed by a SET (Celery's way) lets a PROGRESS
# write land between a revoke's REVOKED and the task's end, un-finishing the task.
#
# An owned task's history follows (taskcast_celery.owners): STARTED and the final state
# are written to its entry, and a final moves it from its owner's unfinished tasks to the
# finished ones. A writer that does not know the owner (the service cancelling a task)
# passes '' and the owner and tags are carried over from the record it replaces, spliced
# into the new one's text (never re-encoding the task's result here); '-' says the task
# has none.
#
# KEYS[1]: the record. ARGV: the record's JSON, its TTL (0: none), the key prefix, the
# owner ('' unknown, '-' none), the state, the task id, whether final ('1'), then for a
# final: its error and result for the history (JSON), and the seconds history is kept.
# Returns 0 (not written: already final), 1, or for an owned task's first final its entry's
# {1, webhook, owner, name, tags} (nil for what it lacks), for its webhook.
_STORE_LUA = (
    _CLOCK_LUA
    + IS_FINAL_LUA
    + """
local old = redis.call('GET', KEYS[1])
local previous = nil
if old then
    local ok, decoded = pcall(cjson.decode, old)
    if ok and type(decoded) == 'table' then
        previous = decoded
    end
end
if previous and final_status(previous['status']) then
    return 0
end
local record = ARGV[1]
local owner = ARGV[4]
if owner == '' and previous and type(previous['owner']) == 'string' then
    owner = previous['owner']
    local tags = '[]'
    if type(previous['tags']) == 'table' and #previous['tags'] > 0 then
        tags = cjson.encode(previous['tags'])
    end
    record = '{"owner":' .. cjson.encode(owner) .. ',"tags":' .. tags .. ','
        .. string.sub(record, 2)
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], record, 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], record)
end
redis.call('PUBLISH', KEYS[1], record)
if owner == '' or owner == '-' then
    return 1
end
local entry = ARGV[3] .. 'taskcast-history-' .. ARGV[6]
if redis.call('EXISTS', entry) == 0 then
    return 1
end
local state = ARGV[5]
if ARGV[7] == '1' then
    local now = now_ms()
    local keep = tonumber(ARGV[10])
    redis.call('HSET', entry, 'state', state, 'finished_at', string.format('%d', now),
               'error', ARGV[8], 'result', ARGV[9])
    redis.call('ZREM', ARGV[3] .. 'taskcast-owner-active-' .. owner, ARGV[6])
    local done = ARGV[3] .. 'taskcast-owner-done-' .. owner
    redis.call('ZADD', done, now, ARGV[6])
    redis.call('ZREMRANGEBYSCORE', done, '-inf', '(' .. string.format('%d', now - keep * 1000))
    redis.call('EXPIRE', done, keep)
    local found = redis.call('HMGET', entry, 'webhook', 'owner', 'name', 'tags')
    return {1, found[1], found[2], found[3], found[4]}
elseif state == 'STARTED' then
    redis.call('HSET', entry, 'state', state, 'started_at', string.format('%d', now_ms()))
end
return 1
"""
)

# SENT only where the task has no record yet, announced only when written: SENT over a
# live task's state would make a watcher step backwards, and a retry's re-publish (same
# id) must not reset the task.
_WRITE_SENT_LUA = """
local function write_sent()
    local written
    if tonumber(ARGV[2]) > 0 then
        written = redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX')
    else
        written = redis.call('SET', KEYS[1], ARGV[1], 'NX')
    end
    if written then
        redis.call('PUBLISH', KEYS[1], ARGV[1])
    end
    return written
end
"""
_RECORD_SENT_LUA = _WRITE_SENT_LUA + "write_sent()\n"

# The same for an owned task, which also joins its owner's history: its entry (kept for
# the history's seconds), its owner's list and unfinished tasks (each trimmed of what is
# older than that, so trimming is bounded by what expired), and the announcement on its
# owner's feed channel. KEYS: the record, the entry, the list, the unfinished tasks.
# ARGV: the record's JSON, its TTL, the task id, its name, the owner, its tags (JSON), its
# webhook ('' none), the history's seconds, the feed channel.
_RECORD_OWNED_SENT_LUA = (
    _CLOCK_LUA
    + _WRITE_SENT_LUA
    + """
if not write_sent() then
    return 0
end
local now = now_ms()
local keep = tonumber(ARGV[8])
local oldest = now - keep * 1000
redis.call('HSET', KEYS[2], 'task_id', ARGV[3], 'name', ARGV[4], 'owner', ARGV[5],
           'tags', ARGV[6], 'state', 'SENT', 'sent_at', string.format('%d', now))
if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[2], 'webhook', ARGV[7])
end
redis.call('EXPIRE', KEYS[2], keep)
redis.call('ZADD', KEYS[3], 0, member(now, ARGV[3]))
redis.call('ZREMRANGEBYLEX', KEYS[3], '(' .. member(oldest, ''), '+')
redis.call('EXPIRE', KEYS[3], keep)
redis.call('ZADD', KEYS[4], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.format('%d', oldest))
redis.call('EXPIRE', KEYS[4], keep)
redis.call('PUBLISH', ARGV[9], ARGV[3])
return 1
"""
)

# What a history entry keeps of a result: its JSON up to this size, else nothing but
# the size it had (docs/protocol.md).
HISTORY_RESULT_BYTES = 2048
# Seconds an owned task stays listed, unless the app says (``install``).
DEFAULT_HISTORY_SECONDS = 7 * 86_400


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
    app: Any
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

    @functools.cached_property
    def _owned_sent_script(self) -> Script:
        client: Redis = self.client
        return client.register_script(_RECORD_OWNED_SENT_LUA)

    @property
    def history_seconds(self) -> int:
        """Seconds an owned task stays listed (``install``'s ``history_seconds``)."""
        return int(self.app.conf.get("taskcast_history_seconds") or DEFAULT_HISTORY_SECONDS)

    def record_sent(
        self, task_id: str, name: str | None, ownership: owners.Ownership | None = None
    ) -> None:
        """Record ``task_id`` as SENT, unless it already has a record: called before its
        message is published, so that a fast worker's state is never overwritten. An
        owned task also joins its owner's history and is announced on its feed."""
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
        ttl = int(self.expires or 0)
        if ownership is None:
            self._sent_script(keys=[key], args=[self.encode(meta), ttl])
            return
        meta["owner"], meta["tags"] = ownership.owner, list(ownership.tags)
        prefix, owner = self.key_prefix, ownership.owner
        self._owned_sent_script(
            keys=[
                key,
                keys.history_key(prefix, task_id),
                keys.owner_tasks_key(prefix, owner),
                keys.owner_active_key(prefix, owner),
            ],
            args=[
                self.encode(meta),
                ttl,
                task_id,
                name or "",
                owner,
                json.dumps(list(ownership.tags)),
                ownership.webhook or "",
                self.history_seconds,
                keys.owner_feed_channel(prefix, owner),
            ],
        )

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
        task_id = bytes_to_str(task_id)
        meta["task_id"] = task_id
        last_progress = getattr(request, _LAST_PROGRESS, None)
        final = state in FINAL_STATES
        if final and last_progress is not None:
            meta["progress"] = last_progress
        # A worker knows its task's owner from the message's headers: none there, none
        # at all. Another writer (the service cancelling a task) leaves it to the script.
        ownership = None if request is None else owners.from_request(request)
        if ownership is not None:
            meta["owner"], meta["tags"] = ownership.owner, list(ownership.tags)
            owner = ownership.owner
        else:
            owner = "" if request is None else "-"
        history: list[Any] = ["", "", 0]
        if final and owner != "-":
            history = [
                json.dumps(_history_error(state, result)),
                _history_result(state, result),
                self.history_seconds,
            ]
        key = self.get_key_for_task(task_id)
        ttl = int(self.expires or 0)
        args = [
            self.encode(meta),
            ttl,
            self.key_prefix,
            owner,
            state,
            task_id,
            "1" if final else "",
        ]
        written = self.ensure(self._store_script, ([key], [*args, *history]))
        if isinstance(written, list):
            # An owned task's first final, written by this process alone: its webhook is
            # queued here, once (taskcast_celery.webhooks).
            webhooks.task_finished(self.app, task_id, state, written[1:], history[0], history[1])
        return result


def _history_error(state: str, result: Any) -> dict[str, str] | None:
    """A final state's error, as a history entry keeps it: its type and message."""
    if state == SUCCESS:
        return None
    if isinstance(result, dict) and "exc_type" in result:
        message = result.get("exc_message")
        if isinstance(message, list | tuple):
            message = " ".join(str(part) for part in message)
        return {"type": str(result["exc_type"]), "message": str(message)[:1000]}
    if isinstance(result, BaseException):
        return {"type": type(result).__name__, "message": str(result)[:1000]}
    return {"type": state, "message": str(result)[:1000]}


def _history_result(state: str, result: Any) -> str:
    """A success's result as a history entry keeps it: its JSON when it is at most
    ``HISTORY_RESULT_BYTES``, else ``{"truncated": true, "bytes": N}``."""
    if state != SUCCESS:
        return "null"
    try:
        text = json.dumps(result, separators=(",", ":"))
    except (TypeError, ValueError):
        return json.dumps({"truncated": True, "bytes": None})
    if len(text.encode()) > HISTORY_RESULT_BYTES:
        return json.dumps({"truncated": True, "bytes": len(text.encode())})
    return text


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
