"""Test environment: what this session's tests, servers and workers read from
``os.environ``.

Importing this module sets only what needs no server: the key prefix unique to this
session (every key the tests write starts with it, and only those keys are removed at
the end), the workers' heartbeat, the e-mail settings. The rest is ``session()``'s, which
the ``environment`` fixture (tests/conftest.py) enters before the first test, so that
collecting the tests (``pytest --collect-only``) starts nothing and connects nowhere:

* Redis: a redis-server of the session's own (the embedded one ``taskcast dev`` runs),
  on a free port, stopped at the end; or the one ``TASKCAST_TEST_REDIS_URL`` names. A
  Redis that merely answers on 127.0.0.1:6379 is never used: on a developer's machine it
  is their own, or their team's (tests/test_env.py checks that the suite leaves it alone);
* e-mail goes to a fake Mailtrap of this session (real HTTPS on loopback, see
  ``tests.mailtrap_server``), which every worker trusts through ``REQUESTS_CA_BUNDLE``.

The demo app reads its settings when it is built (``taskcast_celery.demo.celery``), and
so does tests/installed_app.py: tests import them within a test or a fixture (the demo
app through ``tests.support.session_app``), never at a module's top, where they would be
built at collection, before ``session()`` has set this session's Redis and Mailtrap.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator

from taskcast.cli.devstack import EmbeddedRedis, Supervisor, describe_redis, redis_answers
from tests.mailtrap_server import CA, FakeMailtrap

# Another Redis for the suite (README, Development): every key the suite writes there
# starts with KEY_PREFIX, and those keys are removed at the end. Unset: a Redis of its own.
OTHER_REDIS = os.environ.get("TASKCAST_TEST_REDIS_URL") or None
KEY_PREFIX = f"taskcast-test-{uuid.uuid4().hex[:12]}:"
# With characters that percent-encoding changes, as a real token may have: an answer
# that echoes it encoded must be scrubbed too.
MAILTRAP_TOKEN = f"Test/Token+{uuid.uuid4().hex}="
MAIL_FROM = "reports@taskcast.test"
MAIL_FROM_NAME = "taskcast reports"

# Set by session(), before the first test.
REDIS_URL: str
MAILTRAP: FakeMailtrap
CA_FILE: str

# Modules that read the environment as they are imported: built before session(), they
# would miss this session's Redis and Mailtrap.
_READ_AT_IMPORT = ("taskcast_celery.demo.celery", "tests.installed_app")

os.environ["TASKCAST_KEY_PREFIX"] = KEY_PREFIX
# Until session() sets them, no Redis and no Mailtrap at all: not the shell's.
for name in (
    "TASKCAST_REDIS_URL",
    "TASKCAST_BROKER_URL",
    "TASKCAST_RESULT_BACKEND_URL",
    "TASKCAST_QUEUE",
    "MAILTRAP_API_HOST",
    "REQUESTS_CA_BUNDLE",
):
    os.environ.pop(name, None)
# Workers beat five times a second, so that tests of stalled tasks (tests/test_stalled.py,
# with a stall threshold of their own) take seconds, not minutes.
os.environ["TASKCAST_HEARTBEAT_INTERVAL"] = "0.2"
os.environ.update(
    {
        "MAILTRAP_API_TOKEN": MAILTRAP_TOKEN,
        "TASKCAST_MAIL_FROM": MAIL_FROM,
        "TASKCAST_MAIL_FROM_NAME": MAIL_FROM_NAME,
        # Retries in milliseconds, not seconds, and few of them.
        "TASKCAST_MAIL_RETRY_BACKOFF": "0.01",
        "TASKCAST_MAIL_MAX_RETRIES": "2",
    }
)
for name in ("MAILTRAP_SANDBOX", "MAILTRAP_INBOX_ID", "TASKCAST_DEV"):
    os.environ.pop(name, None)


@contextlib.contextmanager
def session() -> Iterator[None]:
    """This session's Redis and fake Mailtrap, in ``os.environ`` (and as ``REDIS_URL``,
    ``MAILTRAP`` and ``CA_FILE`` here) for the block; an embedded Redis it started is
    stopped at the end, and the CA file removed.

    The fake Mailtrap is bound (and listening) from here on; it answers once started
    (conftest's ``mailtrap_server``).
    """
    global REDIS_URL, MAILTRAP, CA_FILE
    early = [name for name in _READ_AT_IMPORT if name in sys.modules]
    assert not early, (
        f"{early} imported before this session's environment was set (at collection?): "
        "import it within a test or a fixture, see tests/env.py"
    )
    with contextlib.ExitStack() as stack:
        REDIS_URL = stack.enter_context(_redis())
        MAILTRAP = FakeMailtrap()
        ca_fd, CA_FILE = tempfile.mkstemp(prefix="taskcast-test-ca-", suffix=".pem")
        os.close(ca_fd)
        stack.callback(os.remove, CA_FILE)
        CA.cert_pem.write_to_path(CA_FILE)
        os.environ.update(
            {
                "TASKCAST_REDIS_URL": REDIS_URL,
                "MAILTRAP_API_HOST": MAILTRAP.host,
                "REQUESTS_CA_BUNDLE": CA_FILE,
            }
        )
        yield


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    """The Redis ``TASKCAST_TEST_REDIS_URL`` names (which must answer); else an embedded
    one of this session's own, stopped at the end."""
    if OTHER_REDIS is not None:
        if not redis_answers(OTHER_REDIS, timeout=5):
            raise RuntimeError(
                f"TASKCAST_TEST_REDIS_URL: no Redis answers at {describe_redis(OTHER_REDIS)}; "
                "unset it to run the tests on a redis-server of their own"
            )
        yield OTHER_REDIS
        return
    supervisor = Supervisor(os.environ)
    embedded = EmbeddedRedis(supervisor)
    try:
        embedded.start()
        yield embedded.url
    finally:
        supervisor.stop_all()
        embedded.cleanup()
