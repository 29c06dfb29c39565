"""Test environment, fixed before any taskcast module is imported.

Settings are read once, when ``workers.app`` is imported, so the Redis URL and the key
prefix of this test session must be in the environment first. Tests use the machine's
Redis (127.0.0.1:6379, database 15) when it answers, or else an embedded redis-server
of their own; every key they write starts with a prefix unique to this session, and
only those keys are removed at the end.
"""

from __future__ import annotations

import atexit
import os
import uuid

from service.devstack import EmbeddedRedis, Supervisor, redis_answers

LOCAL_REDIS = os.environ.get("TASKCAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
KEY_PREFIX = f"taskcast-test-{uuid.uuid4().hex[:12]}:"


def _choose_redis() -> str:
    if redis_answers(LOCAL_REDIS):
        return LOCAL_REDIS
    supervisor = Supervisor(os.environ)
    embedded = EmbeddedRedis(supervisor)
    embedded.start()

    def stop() -> None:
        supervisor.stop_all()
        embedded.cleanup()

    atexit.register(stop)
    return embedded.url


REDIS_URL = _choose_redis()
os.environ["TASKCAST_REDIS_URL"] = REDIS_URL
os.environ["TASKCAST_KEY_PREFIX"] = KEY_PREFIX
for name in ("TASKCAST_BROKER_URL", "TASKCAST_RESULT_BACKEND_URL", "TASKCAST_QUEUE"):
    os.environ.pop(name, None)
