"""``taskcast.install(app)`` on a user's app (tests/installed_app.py), with a real worker
started by Celery's own ``celery -A`` command: what it adds, and that what the app
already did keeps working.

tests/installed_app.py reads the session's Redis from the environment as it is imported,
as a user's app module does: the tests import it when they run, not at collection
(tests/env.py).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from celery import Celery, chord, group, shared_task
from celery._state import get_current_app

import taskcast
from taskcast.app import create_app
from taskcast.redis_pool import sentinel_hosts
from taskcast.served import AppError, serve_app
from taskcast_celery import keys
from taskcast_celery.backend import TaskcastRedisBackend, TaskcastSentinelBackend
from taskcast_celery.install import InstallError, installation
from taskcast_celery.owners import Ownership
from tests import env
from tests.support import WorkerProcess

T = TypeVar("T")


def until(probe: Callable[[], T], accept: Callable[[T], bool], within: float = 15.0) -> T:
    """``probe()`` once ``accept`` approves it (for Celery's synchronous API)."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"not met within {within}s; last: {value!r}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def installed_worker(redis_client: redis.Redis) -> Iterator[WorkerProcess]:
    from tests.installed_app import app

    worker = WorkerProcess(concurrency=2, app="tests.installed_app")
    worker.start()
    try:
        until(lambda: app.control.ping([worker.hostname], timeout=0.5), bool, 30)
        yield worker
    finally:
        worker.stop()


def record(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    from tests.installed_app import PREFIX

    raw = client.get(keys.task_meta_key(PREFIX, task_id))
    return None if raw is None else dict(json.loads(raw))


def test_results_retries_groups_chords_and_forget_work_as_before(
    installed_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    from tests.installed_app import add, flaky, report, tsum

    assert add.delay(2, 3).get(timeout=10) == 5
    assert flaky.delay(2).get(timeout=10) == 2
    assert group(add.s(i, i) for i in range(5)).apply_async().get(timeout=10) == [0, 2, 4, 6, 8]
    assert chord(add.s(i, i) for i in range(5))(tsum.s()).get(timeout=10) == 20
    done = report.delay(3)
    assert done.get(timeout=10) == "reported"
    assert (done.state, done.info) == ("SUCCESS", "reported")
    # taskcast's final record keeps the last progress, beside what Celery stores.
    stored = record(redis_client, done.id)
    assert stored is not None and stored["progress"] == {"current": 3, "total": 3}
    done.forget()
    assert record(redis_client, done.id) is None
    assert done.state == "PENDING"


def test_progress_under_a_state_of_the_task_s_own_is_kept_for_its_success(
    installed_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    from tests.installed_app import upload

    done = upload.delay(4)
    assert done.get(timeout=10) == "uploaded"
    stored = record(redis_client, done.id)
    assert stored is not None and stored["progress"] == {"current": 4, "total": 4}


def test_state_and_info_while_the_task_runs(installed_worker: WorkerProcess) -> None:
    from tests.installed_app import report

    running = report.delay(20, 0.1)
    state = until(lambda: (running.state, running.info), lambda s: s[0] == "PROGRESS")
    assert state[1]["total"] == 20 and 1 <= state[1]["current"] <= 20
    assert running.get(timeout=10) == "reported"


def test_a_worker_started_with_celery_a_beats_for_its_tasks(
    installed_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    from tests.installed_app import PREFIX, beating

    task = beating.delay()
    assert task.get(timeout=10) is True
    # The beat ends with the task.
    assert not redis_client.exists(keys.heartbeat_key(PREFIX, task.id))


def test_sent_is_recorded_before_publish_and_no_channel_is_left_subscribed(
    redis_client: redis.Redis,
) -> None:
    from tests.installed_app import PREFIX, add

    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    try:
        queued = add.apply_async((1, 1), queue=queue)
        stored = record(redis_client, queued.id)
        assert stored is not None and stored["status"] == "SENT"
        # Celery's own AsyncResult reads it too: SENT, not PENDING.
        assert queued.state == "SENT"
        # Stock Celery SUBSCRIBEs the producer to each task's channel and keeps it.
        channel = keys.task_meta_key(PREFIX, queued.id)
        assert redis_client.pubsub_numsub(channel) == [(channel.encode(), 0)]
        # A second publish of the same id (a retry's) does not reset its record.
        redis_client.set(keys.task_meta_key(PREFIX, queued.id), json.dumps({"status": "RETRY"}))
        add.apply_async((1, 1), queue=queue, task_id=queued.id)
        assert record(redis_client, queued.id) == {"status": "RETRY"}
    finally:
        redis_client.delete(f"{PREFIX}{queue}")


def fresh_app(name: str, prefix: str, **options: Any) -> Celery:
    app = Celery(name, broker=env.REDIS_URL, backend=env.REDIS_URL, **options)
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    return app


def test_install_changes_only_the_app_it_is_given(redis_client: redis.Redis) -> None:
    prefix = f"{env.KEY_PREFIX}only-{uuid.uuid4().hex[:8]}:"
    # The project's own app, Celery's current one, and a @shared_task of the project.
    project = fresh_app("project", prefix)
    name = f"shared-{uuid.uuid4().hex[:8]}"

    @shared_task(name=name)
    def shared() -> str:
        return "shared"

    # Another app in the process, made taskcast-ready: nothing of the project's changes.
    other = fresh_app("other", prefix, set_as_current=False)
    taskcast.install(other)
    assert get_current_app() is project
    assert shared.app is project  # type: ignore[attr-defined]
    assert not isinstance(project.backend, TaskcastRedisBackend)
    assert installation(project) is None
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    try:
        # The project's app writes no SENT records (it was not installed)...
        plain = project.send_task(name, task_id=str(uuid.uuid4()), queue=queue)
        assert not redis_client.exists(keys.task_meta_key(prefix, plain.id))
        # ...and the installed one does, without becoming anyone's current app.
        ours = other.send_task(name, task_id=str(uuid.uuid4()), queue=queue)
        assert redis_client.exists(keys.task_meta_key(prefix, ours.id))
        assert get_current_app() is project
    finally:
        for key in redis_client.scan_iter(match=f"{prefix}*"):
            redis_client.delete(key)
        project.close()
        other.close()


def test_install_again_changes_nothing() -> None:
    from tests.installed_app import app

    first = installation(app)
    assert taskcast.install(app) is app
    assert installation(app) is first
    assert isinstance(app.backend, TaskcastRedisBackend)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"backend": "db+sqlite:///results.db"}, "result_backend is 'db+sqlite:///results.db'"),
        ({"backend": "rpc://"}, "result_backend is 'rpc://'"),
        ({}, "result_backend is None"),
        (
            {"backend": "redis://h/0", "config": {"result_serializer": "pickle"}},
            "result_serializer",
        ),
        (
            {"backend": "redis://h/0", "config": {"result_compression": "gzip"}},
            "result_compression",
        ),
        (
            {"backend": "sentinel://h:26379/0;sentinel://h2:26379/0"},
            "result_backend_transport_options['master_name']",
        ),
    ],
)
def test_install_says_which_setting_taskcast_cannot_work_with(
    options: dict[str, Any], named: str
) -> None:
    config = options.pop("config", {})
    app = Celery("wrong", set_as_current=False, **options)
    app.conf.update(config)
    with pytest.raises(InstallError, match=re.escape(named)):
        taskcast.install(app)
    assert installation(app) is None


def test_a_password_in_a_refused_url_is_not_shown() -> None:
    app = Celery("wrong", set_as_current=False, backend="db+postgresql://me:hunter22@db/x")
    with pytest.raises(InstallError) as refused:
        taskcast.install(app)
    assert "hunter22" not in str(refused.value)


def test_the_service_refuses_an_app_that_is_not_ready_naming_why() -> None:
    never = Celery("never", set_as_current=False, backend=env.REDIS_URL)
    with pytest.raises(AppError, match=re.escape("not taskcast-ready: call taskcast.install")):
        create_app(celery_app=never)
    # Installed, then pointed at a backend taskcast cannot read.
    changed = fresh_app("changed", env.KEY_PREFIX, set_as_current=False)
    taskcast.install(changed)
    changed.conf.result_backend = "rpc://"
    with pytest.raises(AppError, match="result_backend is 'rpc://'"):
        create_app(celery_app=changed)


def test_an_app_on_sentinels_gets_the_sentinel_backend_and_the_service_its_master() -> None:
    app = Celery(
        "watched",
        set_as_current=False,
        backend="sentinel://:secret@h1:26379/3;sentinel://h2:26380/3",
    )
    app.conf.result_backend_transport_options = {
        "master_name": "mymaster",
        "sentinel_kwargs": {"password": "sentinels-own"},
    }
    taskcast.install(app)
    assert isinstance(app.backend, TaskcastSentinelBackend)
    served = serve_app(app, "watched")
    assert (served.sentinel_master, served.sentinel_options) == (
        "mymaster",
        {"password": "sentinels-own"},
    )
    assert "secret" not in served.redacted_url()
    assert sentinel_hosts(served.redis_url) == (
        [("h1", 26379), ("h2", 26380)],
        {"db": 3, "password": "secret"},
    )


def test_install_before_configuring_says_to_call_it_after() -> None:
    app = Celery("early", set_as_current=False)
    with pytest.raises(InstallError) as refused:
        taskcast.install(app)
    message = str(refused.value)
    assert "result_backend is None, not set yet" in message
    assert "call taskcast.install(app) after configuring the app" in message
    assert "config_from_object" in message
    # Called after configuring, as the message says: ready.
    app.config_from_object({"result_backend": "redis://h/0"})
    taskcast.install(app)
    assert installation(app) is not None


CANCEL_ON_LOSS = "worker_cancel_long_running_tasks_on_connection_loss"


@pytest.mark.parametrize(
    ("configure", "expected"),
    [
        (lambda app: None, False),
        (lambda app: app.conf.update({CANCEL_ON_LOSS: True}), True),
        (
            lambda app: app.config_from_object(
                {"result_backend": "redis://h/0", CANCEL_ON_LOSS: True}
            ),
            True,
        ),
        # Celery's old-style name, read as the new one.
        (
            lambda app: app.config_from_object(
                {
                    "CELERY_RESULT_BACKEND": "redis://h/0",
                    "CELERYD_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS": True,
                }
            ),
            True,
        ),
    ],
    ids=["unset", "conf.update", "config_from_object", "old-style name"],
)
def test_a_broker_loss_cancels_no_running_task_unless_the_app_chose(
    configure: Callable[[Celery], object], expected: bool
) -> None:
    """Celery 6 makes True the default: every running task cancelled and run again on a
    broker failover (docs/operations.md, "When Redis goes away")."""
    app = Celery("chooses", set_as_current=False, backend="redis://h/0")
    configure(app)
    taskcast.install(app)
    assert app.conf[CANCEL_ON_LOSS] is expected


def test_history_lasts_what_the_environment_or_install_says(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKCAST_HISTORY_SECONDS", "120")
    from_env = taskcast.install(fresh_app("history-env", env.KEY_PREFIX + "history:"))
    given = taskcast.install(
        fresh_app("history-arg", env.KEY_PREFIX + "history:"), history_seconds=30
    )
    assert from_env.conf.taskcast_history_seconds == 120
    assert given.conf.taskcast_history_seconds == 30
    # What an owned task's entry lives for, from its SENT record on.
    task_id = str(uuid.uuid4())
    given.backend.record_sent(task_id, "t", Ownership("user:history"))
    ttl = redis_client.ttl(keys.history_key(given.backend.key_prefix, task_id))
    assert 0 < ttl <= 30
