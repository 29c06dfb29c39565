"""The suite leaves other people's Redis alone (tests/env.py): without
``TASKCAST_TEST_REDIS_URL`` it runs on a redis-server of its own, and never on the one
that answers on 127.0.0.1:6379, which on a developer's machine is their own or their
team's, even where their shell's ``TASKCAST_REDIS_URL`` names it."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import redis

from tests import env
from tests.support import ROOT

DEV_REDIS = "redis://127.0.0.1:6379/0"
# A quick test that writes to the suite's Redis (a record, a dispatch) and needs no
# worker: a few seconds, most of them imports.
QUICK = ["tests/test_install.py", "-k", "test_sent_is_recorded_before_publish"]


def connections_received(probe: redis.Redis) -> int:
    """How many connections the server has accepted since it started (its own count,
    so that even a connection opened and closed at once shows)."""
    stats = probe.info("stats")
    return int(stats["total_connections_received"])


def run_quick_tests() -> subprocess.CompletedProcess[str]:
    """``pytest`` on ``QUICK`` in a process of its own, from a developer's shell: no
    ``TASKCAST_TEST_REDIS_URL``, and taskcast's own settings naming the Redis on 6379.
    (``python -m pytest`` of this environment is what ``uv run pytest`` runs, without uv
    syncing the environment this very session runs in.)"""
    shell = {k: v for k, v in os.environ.items() if not k.startswith("TASKCAST_")}
    shell.update(
        {
            "TASKCAST_REDIS_URL": DEV_REDIS,
            "TASKCAST_BROKER_URL": DEV_REDIS,
            "TASKCAST_RESULT_BACKEND_URL": DEV_REDIS,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", *QUICK, "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=shell, capture_output=True, text=True, timeout=90,
    )  # fmt: skip


@pytest.mark.timeout(200)
def test_a_quick_test_run_opens_no_connection_to_the_redis_on_6379() -> None:
    other = urlsplit(env.OTHER_REDIS or "")
    if other.hostname in ("127.0.0.1", "localhost") and other.port in (6379, None):
        pytest.skip("this session itself runs on the Redis on 6379 (TASKCAST_TEST_REDIS_URL)")
    # One connection for every read: the probe itself adds none between them.
    probe = redis.Redis.from_url(DEV_REDIS, socket_connect_timeout=1, socket_timeout=5)
    try:
        probe.ping()
    except (redis.RedisError, OSError):
        pytest.skip("no Redis answers on 127.0.0.1:6379: nothing to leave alone")
    try:
        counts = []
        # Anyone else on this machine may connect to it meanwhile: a second run tells
        # their connection from the suite's, which would show in both.
        for _ in range(2):
            before = connections_received(probe)
            run = run_quick_tests()
            after = connections_received(probe)
            assert run.returncode == 0, run.stdout + run.stderr
            assert "1 passed" in run.stdout, run.stdout
            counts.append(after - before)
            if after == before:
                break
        assert counts[-1] == 0, f"new connections to {DEV_REDIS} during each run: {counts}"
    finally:
        probe.close()
