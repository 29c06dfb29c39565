"""RabbitMQ as the broker, Redis as the result backend: what taskcast does on Redis, it
does on a real RabbitMQ.

RabbitMQ is the machine's, ``amqp://guest:guest@127.0.0.1:5672//`` unless
``TASKCAST_TEST_AMQP_URL`` names another; where none answers these tests skip, saying so
(under ``CI=true`` they fail). The records, heartbeats and revoked markers are in the
session's Redis, as always.

The tests touch nothing on RabbitMQ that they did not make: every queue and exchange is
named for the session (``tests.env.KEY_PREFIX``), Celery's control and event exchanges
included (``tests/rabbitmq_app.py`` says why), and the module deletes them all at its
end. The workers are real ``celery -A tests.rabbitmq_app worker`` processes (the demo
app, configured by ``TASKCAST_BROKER_URL``), the service a real uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from celery import Celery, signals
from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from taskcast.app import create_app
from taskcast_celery import keys
from tests import env
from tests.support import (
    ROOT,
    WorkerProcess,
    assert_progress_in_order,
    demo_app,
    eventually,
    final,
    read_until_closed,
    recv_json,
    running_server,
    settings_with,
    submit,
    unavailable,
    wait_for_state,
    ws_connect,
)

AMQP_URL = os.environ.get("TASKCAST_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
# Every name this module gives RabbitMQ starts with the session's own.
RUN = env.KEY_PREFIX.rstrip(":")
QUEUE = f"{RUN}-tasks"
PARKED = f"{RUN}-parked"  # a queue no worker reads
STALLING = f"{RUN}-stalling"  # the queue of the worker a test kills
CONTROL = f"{RUN}-control"
EVENTS = f"{RUN}-events"
# Celery names a queue's exchange after the queue; the control exchange makes two.
QUEUES = (QUEUE, PARKED, STALLING)
EXCHANGES = (*QUEUES, f"{CONTROL}.pidbox", f"reply.{CONTROL}.pidbox", EVENTS)
STALL_AFTER = 1.0

# Every test here needs RabbitMQ: skipped, or failed under CI=true, where none answers.
pytestmark = pytest.mark.usefixtures("rabbitmq")


def amqp_env(queue: str = QUEUE) -> dict[str, str]:
    """The environment of this module's workers and service processes."""
    return {
        **os.environ,
        "TASKCAST_BROKER_URL": AMQP_URL,
        "TASKCAST_QUEUE": queue,
        "TASKCAST_TEST_CONTROL_EXCHANGE": CONTROL,
        "TASKCAST_TEST_EVENT_EXCHANGE": EVENTS,
    }


def amqp_app(queue: str = QUEUE) -> Celery:
    """The app tests/rabbitmq_app.py builds in the workers, built here: the demo app on
    RabbitMQ, with the session's control and event exchanges."""
    app = demo_app(broker_url=AMQP_URL, queue=queue)
    app.conf.update(control_exchange=CONTROL, event_exchange=EVENTS)
    return app


def amqp_worker(queue: str = QUEUE, concurrency: int = 2) -> WorkerProcess:
    return WorkerProcess(
        concurrency=concurrency, queues=queue, env=amqp_env(queue), app="tests.rabbitmq_app"
    )


@pytest.fixture(scope="module")
def rabbitmq(environment: None) -> Iterator[str]:
    """The RabbitMQ URL, once it answers; every queue and exchange of this module's is
    deleted at its end."""
    try:
        with Connection(AMQP_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=0)
    except Exception as exc:
        unavailable(
            f"no RabbitMQ answers at {maybe_sanitize_url(AMQP_URL)} "
            f"({type(exc.__cause__ or exc).__name__}): set TASKCAST_TEST_AMQP_URL to one"
        )
    yield AMQP_URL
    with Connection(AMQP_URL, connect_timeout=3) as connection:
        for queue in QUEUES:
            # RabbitMQ deletes a queue or exchange that is not there without complaint.
            connection.default_channel.queue_delete(queue)
        for exchange in EXCHANGES:
            connection.default_channel.exchange_delete(exchange)


def await_worker(app: Celery, worker: WorkerProcess) -> None:
    """Until the worker answers a ping over the broker (it consumes by then)."""
    deadline = time.monotonic() + 30
    while not app.control.ping(destination=[worker.hostname], timeout=0.5):
        assert worker.process is not None and worker.process.poll() is None, "worker exited"
        assert time.monotonic() < deadline, "the worker did not answer within 30 s"


@pytest.fixture(scope="module")
def celery_app(rabbitmq: str) -> Celery:
    return amqp_app()


@pytest.fixture(scope="module")
def worker(celery_app: Celery) -> Iterator[WorkerProcess]:
    process = amqp_worker()
    process.start()
    try:
        await_worker(celery_app, process)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def server(celery_app: Celery, worker: WorkerProcess) -> AsyncIterator[str]:
    """The service, in this process, for the demo app on RabbitMQ."""
    app = create_app(celery_app=celery_app, settings=settings_with(stall_after=STALL_AFTER))
    async with running_server(app) as url:
        yield url


@pytest.fixture
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        yield client


async def test_dispatch_over_rest_runs_and_streams(http: httpx.AsyncClient, server: str) -> None:
    ready = await http.get("/readyz")
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ready", "redis": "ok", "broker": "ok"},
    )
    task_id = await submit(http, "progress", total=4, step_seconds=0.05)
    async with ws_connect(server, f"/ws/tasks/{task_id}") as ws:
        statuses, code = await read_until_closed(ws, within=30)
    assert code == 1000
    assert statuses[0]["state"] in ("SENT", "STARTED", "PROGRESS")
    assert_progress_in_order(statuses)
    assert (statuses[-1]["state"], statuses[-1]["result"]) == ("SUCCESS", {"status": "completed"})


def test_delay_records_sent_before_the_message_is_published(
    celery_app: Celery, redis_client: redis.Redis
) -> None:
    """A producer's apply_async (what .delay() calls): the record reads SENT as the
    publish returns, and the message is in RabbitMQ. To a queue no worker reads, so no
    worker's STARTED can come first."""
    seen_at_publish: dict[str, Any] = {}

    def after_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        task_id = (headers or {})["id"]
        seen_at_publish[task_id] = redis_client.get(keys.task_meta_key(env.KEY_PREFIX, task_id))

    signals.after_task_publish.connect(after_publish, weak=False)
    try:
        result = celery_app.tasks["taskcast.sleep"].apply_async(kwargs={"seconds": 0}, queue=PARKED)
    finally:
        signals.after_task_publish.disconnect(after_publish)
    record = json.loads(seen_at_publish[result.id])
    assert (record["status"], record["name"]) == ("SENT", "taskcast.sleep")
    with Connection(AMQP_URL) as connection:
        message = connection.default_channel.basic_get(PARKED, no_ack=True)
    assert message is not None, "the message is not in RabbitMQ"
    assert message.headers["id"] == result.id


def active_ids(app: Celery, worker: WorkerProcess) -> set[str]:
    replies = app.control.inspect(destination=[worker.hostname], timeout=1).active() or {}
    return {task["id"] for tasks in replies.values() for task in tasks}


async def test_cancel_stops_a_running_task(
    http: httpx.AsyncClient, celery_app: Celery, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    """Revoke with terminate is a broadcast on RabbitMQ's control exchange: it reaches the
    worker running the task, which stops it."""
    task_id = await submit(http, "progress", total=400, step_seconds=0.05)
    await wait_for_state(http, task_id, lambda s: s["state"] == "PROGRESS")
    assert task_id in await asyncio.to_thread(active_ids, celery_app, worker)
    response = await http.delete(f"/tasks/{task_id}")
    assert response.status_code == 202, response.text
    done = await wait_for_state(http, task_id, final)
    assert (done["state"], done["error"]["type"]) == ("REVOKED", "TaskRevokedError")
    # Stopped, not merely relabelled: the worker no longer runs it (it would for 20 s).
    await eventually(
        lambda: asyncio.to_thread(active_ids, celery_app, worker), lambda ids: task_id not in ids
    )
    assert not redis_client.exists(keys.heartbeat_key(env.KEY_PREFIX, task_id))


async def test_groups_and_chords(http: httpx.AsyncClient, worker: WorkerProcess) -> None:
    """A group over REST; a chord from a producer process, whose callback the worker
    publishes once Redis counts its header done."""
    response = await http.post(
        "/groups/progress", json={"count": 3, "params": {"total": 2, "step_seconds": 0}}
    )
    assert response.status_code == 202, response.text
    group_id = response.json()["group_id"]

    async def group_status() -> dict[str, Any]:
        answer: dict[str, Any] = (await http.get(f"/groups/{group_id}")).json()
        return answer

    done = await eventually(group_status, final, within=30)
    assert (done["state"], done["size"], done["states"]) == ("SUCCESS", 3, {"SUCCESS": 3})

    # In a process of its own, as a producer is: Celery's GroupResult for a chord's
    # header subscribes its producer to every member's channel and holds them until
    # exit, where each is unsubscribed (here, while the session's Redis is up).
    producer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHORD, env=amqp_env(), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await producer.communicate()
    assert producer.returncode == 0, err.decode()
    members, callback = json.loads(out)
    for task_id in (*members, callback):
        status = await wait_for_state(http, task_id, final, within=30)
        assert status["state"] == "SUCCESS", status


# A chord of two sleeps and a third after them: prints the ids of its members and of its
# callback.
CHORD = """
import json
from celery import chord
from tests.rabbitmq_app import app
sleep = app.tasks["taskcast.sleep"]
callback = chord([sleep.s(seconds=0), sleep.s(seconds=0.1)])(sleep.si(seconds=0))
print(json.dumps([[member.id for member in callback.parent.results], callback.id]))
"""


async def test_a_killed_worker_stalls_and_rabbitmq_hands_its_task_on_at_once() -> None:
    """Heartbeats are in Redis whatever the broker: a SIGKILLed worker's task reads
    stalled. RabbitMQ requeues a dead consumer's unacknowledged message when its
    connection drops, so the next worker runs the task again at once: no visibility
    timeout (TASKCAST_VISIBILITY_TIMEOUT stays 7200 s here)."""
    app = amqp_app(STALLING)
    service = create_app(celery_app=app, settings=settings_with(stall_after=STALL_AFTER))
    first = amqp_worker(STALLING, concurrency=1)
    first.start()
    try:
        await asyncio.to_thread(await_worker, app, first)
        async with running_server(service) as url, httpx.AsyncClient(base_url=url) as http:
            task_id = await submit(http, "progress", total=6, step_seconds=0.3)
            async with ws_connect(url, f"/ws/tasks/{task_id}") as ws:
                seen = [await recv_json(ws, within=30)]
                while seen[-1]["state"] != "PROGRESS":
                    seen.append(await recv_json(ws, within=30))
                assert first.process is not None
                os.killpg(first.process.pid, signal.SIGKILL)
                first.process.wait(10)
                seen.append(await recv_json(ws, within=STALL_AFTER + 10))
                assert (seen[-1]["state"], seen[-1]["stalled"]) == ("PROGRESS", True)
                assert (await http.get(f"/tasks/{task_id}")).json()["stalled"] is True
                second = amqp_worker(STALLING, concurrency=1)
                second.start()
                try:
                    rest, code = await read_until_closed(ws, within=45)
                finally:
                    second.stop()
    finally:
        first.stop()
    assert code == 1000
    assert rest and not any(status["stalled"] for status in rest)
    finals = [status for status in rest if status["final"]]
    assert [(s["state"], s["result"]) for s in finals] == [("SUCCESS", {"status": "completed"})]


async def test_readiness_names_an_unreachable_amqp_broker(rabbitmq: str) -> None:
    """A RabbitMQ that refuses the service's credentials is as unready as one that is
    down (tests/test_readiness.py): the answer names the broker, with no password."""
    parts = urlsplit(AMQP_URL)
    wrong = parts._replace(
        netloc=f"{parts.username or 'guest'}:not-the-password@{parts.hostname}:{parts.port or 5672}"
    ).geturl()
    app = demo_app(broker_url=wrong, queue=QUEUE)
    async with (
        running_server(create_app(celery_app=app, settings=settings_with())) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert (body["status"], body["redis"], body["broker"]) == ("degraded", "ok", "unreachable")
        assert body["detail"].startswith(f"the broker ({maybe_sanitize_url(wrong)}) is unreachable")
        assert "not-the-password" not in ready.text
        assert (await http.get("/healthz")).status_code == 200
