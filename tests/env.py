"""Test environment, fixed before any taskcast module is imported.

The demo app reads its settings when it is built (``taskcast_celery.demo``), so the
Redis URL and the key prefix of this test session must be in the environment first.
Tests use the machine's Redis (127.0.0.1:6379, database 15) when it answers, or else an
embedded redis-server of their own; every key they write starts with a prefix unique to
this session, and only those keys are removed at the end.

E-mail goes to a fake Mailtrap of this session (real HTTPS on loopback, see
``tests.mailtrap_server``), which every worker trusts through ``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import uuid

from taskcast.cli.devstack import EmbeddedRedis, Supervisor, redis_answers
from tests.mailtrap_server import CA, FakeMailtrap

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
# Workers beat five times a second, so that tests of stalled tasks (tests/test_stalled.py,
# with a stall threshold of their own) take seconds, not minutes.
os.environ["TASKCAST_HEARTBEAT_INTERVAL"] = "0.2"

MAILTRAP = FakeMailtrap()
# With characters that percent-encoding changes, as a real token may have: an answer
# that echoes it encoded must be scrubbed too.
MAILTRAP_TOKEN = f"Test/Token+{uuid.uuid4().hex}="
MAIL_FROM = "reports@taskcast.test"
MAIL_FROM_NAME = "taskcast reports"
_ca_fd, CA_FILE = tempfile.mkstemp(prefix="taskcast-test-ca-", suffix=".pem")
os.close(_ca_fd)
CA.cert_pem.write_to_path(CA_FILE)
atexit.register(os.remove, CA_FILE)
os.environ.update(
    {
        "MAILTRAP_API_TOKEN": MAILTRAP_TOKEN,
        "MAILTRAP_API_HOST": MAILTRAP.host,
        "REQUESTS_CA_BUNDLE": CA_FILE,
        "TASKCAST_MAIL_FROM": MAIL_FROM,
        "TASKCAST_MAIL_FROM_NAME": MAIL_FROM_NAME,
        # Retries in milliseconds, not seconds, and few of them.
        "TASKCAST_MAIL_RETRY_BACKOFF": "0.01",
        "TASKCAST_MAIL_MAX_RETRIES": "2",
    }
)
for name in ("MAILTRAP_SANDBOX", "MAILTRAP_INBOX_ID", "TASKCAST_DEV"):
    os.environ.pop(name, None)
