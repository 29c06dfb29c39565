"""Liveness of running tasks: a heartbeat key per task, kept fresh while the task runs.

A worker that dies outright (SIGKILL, a lost machine) takes its task with it, and the
task's record keeps saying STARTED or PROGRESS until the broker hands the message to
another worker (the broker's visibility timeout: an hour by default on Redis). The heartbeat
tells the service that nobody is running it meanwhile: while a task runs, a daemon
thread of the process running it writes Redis's own clock into the task's heartbeat
key every ``TASKCAST_HEARTBEAT_INTERVAL`` seconds. The service compares that time with
Redis's clock when it reads the key, so clocks of different machines never matter.

A thread rather than the task's own progress reports: a task may legitimately go
minutes without reporting (one slow query, one long upload) and must not look dead;
the thread beats while the process lives, whatever the task is doing. The first beat
is written before the task's STARTED record (``task_prerun`` comes first), so a
running task without a heartbeat key was run by a worker that does not beat.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from redis import Redis
from redis.commands.core import Script

from taskcast_celery import keys
from taskcast_celery.backend import IS_FINAL_LUA, TaskcastRedisBackend

logger = logging.getLogger(__name__)

# Redis's clock, in milliseconds, written by Redis itself: workers and the service
# compare times on one clock. Redis 5+ replicates a script's effects, so TIME before
# a write is allowed. A task already final (cancelled while a beat was on its way, or
# just finished) gets no beat, and loses any: no beat ever outlives its task's end.
_BEAT_LUA = (
    IS_FINAL_LUA
    + """
if is_final(redis.call('GET', KEYS[2])) then
    redis.call('DEL', KEYS[1])
    return 0
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if tonumber(ARGV[1]) > 0 then
    redis.call('SET', KEYS[1], ms, 'EX', ARGV[1])
else
    redis.call('SET', KEYS[1], ms)
end
return ms
"""
)

# After a failed beat (Redis unreachable), try again this soon rather than a whole
# interval later: the beat that lands first after an outage ends any doubt.
_RETRY_AFTER = 0.5


class Heartbeat:
    """Beats for every task this process is running (one at a time in a prefork child,
    several in a thread pool)."""

    def __init__(self, backend: Callable[[], TaskcastRedisBackend], interval: float) -> None:
        # The app's backend, asked for when needed: its client, its key prefix and the
        # records' lifetime are the app's configuration, read once the app runs tasks.
        self._backend = backend
        self.interval = interval
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._script: Script | None = None
        # Whether the last beat failed (Redis unreachable): said once, not at every retry.
        self._failing = False

    def start(self, task_id: str) -> None:
        """The task begins: beat at once, then keep beating until ``stop``."""
        with self._lock:
            self._running.add(task_id)
            self._ensure_thread()
        self._beat([task_id])

    def stop(self, task_id: str) -> None:
        """The task has ended (its final or RETRY state is already stored)."""
        with self._lock:
            self._running.discard(task_id)
        try:
            backend = self._backend()
            backend.client.delete(keys.heartbeat_key(backend.key_prefix, task_id))
        except Exception as exc:  # the key expires anyway; never fail the task for it
            logger.warning("could not remove the heartbeat of %s: %r", task_id, exc)

    def _ensure_thread(self) -> None:
        # A forked pool child inherits the object but not the thread: start its own.
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._script = None
        self._thread = threading.Thread(target=self._run, name="taskcast-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self.interval
        while True:
            time.sleep(delay)
            with self._lock:
                running = list(self._running)
            delay = self.interval if self._beat(running) else min(_RETRY_AFTER, self.interval)

    def _beat(self, task_ids: list[str]) -> bool:
        if not task_ids:
            return True
        try:
            backend = self._backend()
            client: Redis = backend.client
            prefix = backend.key_prefix
            # A dead task's key outlives its record by an hour: a record that still says
            # PROGRESS never meets a missing heartbeat, which would read as "never beat".
            expires = int(backend.expires) + 3600 if backend.expires else 0
            if self._script is None:
                self._script = client.register_script(_BEAT_LUA)
            with client.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    beat = keys.heartbeat_key(prefix, task_id)
                    record = keys.task_meta_key(prefix, task_id)
                    self._script(keys=[beat, record], args=[expires], client=pipe)
                pipe.execute()
        except Exception as exc:
            # Once per outage, not twice a second for as long as it lasts.
            if not self._failing:
                logger.warning("heartbeats fail (%r); retrying every %.1f s", exc, _RETRY_AFTER)
            self._failing = True
            return False
        if self._failing:
            logger.warning("heartbeats written again")
            self._failing = False
        return True
