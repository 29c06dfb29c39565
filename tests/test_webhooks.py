"""Webhooks (taskcast_celery.webhooks): an owned task's final POSTed to its URL, signed
as Standard Webhooks says, delivered at least once through receivers that are down,
workers that are killed and cancels; and never to a target that is not allowed.

Real parts: the session's Redis, workers of this module's own (``celery -A
taskcast_celery.demo worker``) on a queue of its own, and an HTTPS receiver on loopback
(tests/webhook_receiver.py) that the workers reach through the session's test CA.
Backoff is kept to fractions of a second by the workers' settings.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import re
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest
import redis
from celery import Celery
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import taskcast
from taskcast.cli.devstack import free_port
from taskcast_celery.webhooks import (
    AllowedHosts,
    Refused,
    WebhookSettings,
    check_target,
    webhook_id,
)
from tests import env
from tests.support import WorkerProcess, demo_app, eventually, running_server
from tests.webhook_receiver import Listener, Received, WebhookReceiver

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
QUICK = {"total": 2, "step_seconds": 0.01}
# Celery's worker log line: "[2026-01-02 03:04:05,678: WARNING/ForkPoolWorker-1] ...".
_LOGGED_AT = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):")


def owner() -> str:
    return f"user:{uuid.uuid4().hex[:12]}"


@dataclass
class Hooks:
    """This module's queue, its producer app, its receiver and its worker's settings."""

    queue: str
    app: Celery
    receiver: WebhookReceiver
    # Allowed, but nothing listens there until a test starts a receiver on it.
    down_ports: list[int]
    # The owner TASKCAST_WEBHOOKS sends to the receiver's /owner.
    configured_owner: str
    worker_env: dict[str, str]
    # Where the module's worker logs (a replacement appends to it).
    logfile: str
    running: WorkerProcess | None = None

    def worker(self, **env: str) -> WorkerProcess:
        """A worker (not started) of the module's queue, with ``env`` on top."""
        return WorkerProcess(
            concurrency=1,
            queues=self.queue,
            # The worker's app sends what it publishes (the deliveries) to the queue too.
            env={**os.environ, **self.worker_env, "TASKCAST_QUEUE": self.queue, **env},
            logfile=self.logfile,
        )


def started(worker: WorkerProcess, app: Celery) -> WorkerProcess:
    worker.start()
    for _ in range(120):
        if app.control.ping(destination=[worker.hostname], timeout=0.5):
            return worker
    raise AssertionError("the worker did not answer within a minute")


@pytest.fixture(scope="module")
def hooks(redis_client: redis.Redis) -> Iterator[Hooks]:
    queue = f"test-webhooks-{uuid.uuid4().hex[:8]}"
    receiver = WebhookReceiver().start()
    down_ports = [free_port() for _ in range(3)]
    configured_owner = owner()
    allowed = ",".join(f"127.0.0.1:{port}" for port in (receiver.port, *down_ports))
    worker_env = {
        "TASKCAST_WEBHOOK_SECRET": SECRET,
        "TASKCAST_WEBHOOK_ALLOWED_HOSTS": allowed,
        "TASKCAST_WEBHOOK_RETRY_FIRST": "0.2",
        "TASKCAST_WEBHOOK_RETRY_MAX": "1",
        "TASKCAST_WEBHOOKS": json.dumps({configured_owner: receiver.url("/owner")}),
        # The session's test CA, whatever the shell had.
        "SSL_CERT_FILE": env.CA_FILE,
    }
    with tempfile.TemporaryDirectory(prefix="taskcast-webhooks-") as logs:
        app = demo_app(queue=queue)
        setup = Hooks(
            queue, app, receiver, down_ports, configured_owner, worker_env, f"{logs}/worker.log"
        )
        setup.running = started(setup.worker(), app)
        try:
            yield setup
        finally:
            # The module's worker, or the one that replaced it.
            setup.running.stop()
            receiver.stop()
            app.close()


def start(app: Celery, owner_name: str, webhook: str | None = None, **params: Any) -> str:
    """The demo app's progress task, owned by ``owner_name`` (with ``webhook``)."""
    with taskcast.owned_by(owner_name, tags=["report"], webhook=webhook):
        return str(app.tasks["taskcast.progress"].delay(**{**QUICK, **params}).id)


async def delivered(receiver: WebhookReceiver, task_id: str, within: float = 20) -> list[Received]:
    """Every request of ``task_id``'s webhook, once one of them was answered 2xx."""
    return await eventually(
        lambda: receiver.requests(webhook_id(task_id)),
        lambda got: any(200 <= r.status < 300 for r in got),
        within=within,
    )


def logged(logfile: str, *words: str) -> list[tuple[float, str]]:
    """The worker's log lines holding every one of ``words``, with when they were logged."""
    try:
        with open(logfile, encoding="utf-8", errors="replace") as log:
            lines = log.readlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        stamp = _LOGGED_AT.match(line)
        if stamp and all(word in line for word in words):
            at = datetime.datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((at, line))
    return found


def verified(request: Received) -> dict[str, Any]:
    """The payload, verified by Standard Webhooks' own ``Webhook.verify``."""
    payload: dict[str, Any] = Webhook(SECRET).verify(request.body, request.headers)
    return payload


async def test_a_final_is_posted_signed_as_standard_webhooks_says(hooks: Hooks) -> None:
    me = owner()
    task_id = start(hooks.app, me, webhook=hooks.receiver.url("/hooks/signed?x=1"))
    (request,) = await delivered(hooks.receiver, task_id)
    payload = verified(request)
    assert payload["type"] == "task.finished"
    assert payload["data"] == {
        "task_id": task_id,
        "name": "taskcast.progress",
        "state": "SUCCESS",
        "owner": me,
        "tags": ["report"],
        "result": {"status": "completed"},
        "error": None,
    }
    sent = datetime.datetime.fromisoformat(payload["timestamp"])
    assert abs(sent.timestamp() - time.time()) < 60
    assert request.path == "/hooks/signed?x=1"
    assert request.headers["webhook-id"] == f"msg_{task_id}"
    # The checked address was connected to, under the URL's own name.
    assert request.headers["host"] == f"127.0.0.1:{hooks.receiver.port}"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.body.replace(b"SUCCESS", b"FAILURE"), request.headers)


async def test_a_receiver_down_for_ten_seconds_gets_the_final_afterwards(hooks: Hooks) -> None:
    port = hooks.down_ports[0]
    task_id = start(hooks.app, owner(), webhook=f"https://127.0.0.1:{port}/late")
    message_id = webhook_id(task_id)
    # The worker keeps trying while nothing listens: ten seconds of failed attempts.
    failures = await eventually(
        lambda: logged(hooks.logfile, message_id, "failed"),
        lambda found: len(found) >= 2 and found[-1][0] - found[0][0] >= 10,
        within=40,
    )
    assert all("no connection" in line for _, line in failures), failures
    # Up at last, but answering 503 and 500 first: three more attempts.
    receiver = WebhookReceiver(port)
    receiver.answer("/late", (503, {}), (500, {}))
    receiver.start()
    try:
        requests = await delivered(receiver, task_id)
    finally:
        receiver.stop()
    assert [r.status for r in requests] == [503, 500, 200]
    # One webhook-id however many tries; each try signed afresh for its own timestamp.
    assert {r.headers["webhook-id"] for r in requests} == {message_id}
    assert len({r.body for r in requests}) == 1
    stamps = [int(r.headers["webhook-timestamp"]) for r in requests]
    assert stamps == sorted(stamps)
    for request in requests:
        assert verified(request)["data"]["task_id"] == task_id


async def test_a_delivery_gives_up_after_its_retry_seconds(hooks: Hooks) -> None:
    # A delivery as taskcast queues one, but whose first attempt was (it says) a day less
    # 1.5 s ago: the worker's TASKCAST_WEBHOOK_RETRY_SECONDS (a day) ends 1.5 s from now.
    message_id = webhook_id(str(uuid.uuid4()))
    url = f"https://127.0.0.1:{hooks.down_ports[2]}/never"
    first_attempt = time.time() - 86_400 + 1.5
    hooks.app.send_task("taskcast.webhook", args=[message_id, url, "{}", first_attempt])
    (given_up,) = await eventually(lambda: logged(hooks.logfile, message_id, "given up"), bool)
    assert "ERROR" in given_up[1] and "no connection" in given_up[1]
    # Tried again meanwhile (the last wait cut short to end at the deadline), then no more.
    failures = logged(hooks.logfile, message_id, "failed")
    assert len(failures) >= 2 and all(at <= given_up[0] for at, _ in failures)
    assert given_up[0] >= first_attempt + 86_400 - 0.1


async def test_a_delivery_survives_its_worker_killed_outright(
    hooks: Hooks, redis_client: redis.Redis
) -> None:
    port = hooks.down_ports[1]
    task_id = start(hooks.app, owner(), webhook=f"https://127.0.0.1:{port}/kill")
    message_id = webhook_id(task_id)
    await eventually(lambda: logged(hooks.logfile, message_id, "failed"), bool)
    # The module's worker, whole and outright, while it holds the next attempt.
    killed = hooks.running
    assert killed is not None and killed.process is not None
    os.killpg(killed.process.pid, signal.SIGKILL)
    killed.process.wait(10)
    # The delivery is the broker's: queued, or held by the dead worker for long enough
    # that the next worker (visibility timeout 1 s) takes it back as it starts.
    await eventually(lambda: waiting_in_broker(redis_client, hooks.queue), bool)
    receiver = WebhookReceiver(port).start()
    try:
        # The module's worker from now on.
        hooks.running = hooks.worker(TASKCAST_VISIBILITY_TIMEOUT="1")
        hooks.running.start()
        requests = await delivered(receiver, task_id, within=40)
    finally:
        receiver.stop()
    assert {r.headers["webhook-id"] for r in requests} == {message_id}
    assert verified(requests[-1])["data"]["state"] == "SUCCESS"


def waiting_in_broker(client: redis.Redis, queue: str) -> bool:
    """Whether a message of ``queue`` is in the Redis broker: in the queue, or held
    unacknowledged for over 1.5 s (kombu's keys, under the session's prefix)."""
    if client.llen(f"{env.KEY_PREFIX}{queue}"):
        return True
    held_since = time.time() - 1.5
    tags = client.zrangebyscore(f"{env.KEY_PREFIX}unacked_index", 0, held_since)
    for tag in cast("list[bytes]", tags):
        raw = client.hget(f"{env.KEY_PREFIX}unacked", tag)
        # [message, exchange, routing key]: the default exchange routes by queue name.
        if raw is not None and json.loads(raw)[2] == queue:
            return True
    return False


@contextlib.contextmanager
def listening(port: int) -> Iterator[Listener | None]:
    """A listener on ``port`` that counts connections; None where something else holds
    the port (someone's Redis on 6379), which the refusal must leave alone all the same."""
    try:
        listener = Listener(port)
    except OSError:
        yield None
        return
    try:
        yield listener
    finally:
        listener.close()


@pytest.mark.parametrize(
    "target",
    [
        # The service's own Redis, where it runs on its default port.
        "https://127.0.0.1:6379/",
        "http://127.0.0.1:6379/",
        # The receiver's own port, but under a name the list does not have.
        "https://localhost:{port}/",
        "https://[::ffff:127.0.0.1]:{port}/",
    ],
)
async def test_a_target_not_allowed_is_refused_without_a_connection(
    hooks: Hooks, target: str
) -> None:
    with listening(6379) as redis_port:
        url = target.format(port=hooks.receiver.port)
        task_id = start(hooks.app, owner(), webhook=url)
        message_id = webhook_id(task_id)
        (refusal,) = await eventually(
            lambda: logged(hooks.logfile, message_id, "refused"), bool, within=20
        )
        assert "ERROR" in refusal[1] and "TASKCAST_WEBHOOK_ALLOWED_HOSTS" in refusal[1]
        # Given up at once: never tried, never tried again.
        assert not logged(hooks.logfile, message_id, "failed")
        assert hooks.receiver.requests(message_id) == []
        assert redis_port is None or redis_port.connections == 0


async def test_a_redirect_is_not_followed(hooks: Hooks) -> None:
    elsewhere = hooks.receiver.url("/elsewhere")
    hooks.receiver.answer("/moved", (302, {"Location": elsewhere}))
    task_id = start(hooks.app, owner(), webhook=hooks.receiver.url("/moved"))
    requests = await delivered(hooks.receiver, task_id)
    # The 302 counted as a failed attempt; the next one went to the same URL.
    assert [(r.path, r.status) for r in requests] == [("/moved", 302), ("/moved", 200)]
    assert not [r for r in hooks.receiver.received if r.path == "/elsewhere"]
    (failure,) = logged(hooks.logfile, webhook_id(task_id), "failed")
    assert "not followed" in failure[1]


async def test_a_cancelled_task_posts_its_revoked_final(hooks: Hooks) -> None:
    from taskcast.app import create_app

    task_id = start(hooks.app, owner(), webhook=hooks.receiver.url("/cancelled"), total=400)
    # The service cancels it: REVOKED is written, and its webhook queued, by the service.
    async with (
        running_server(create_app(hooks.app)) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert (await http.delete(f"/tasks/{task_id}")).status_code == 202
    (request,) = await delivered(hooks.receiver, task_id)
    data = verified(request)["data"]
    assert (data["state"], data["error"]["type"]) == ("REVOKED", "TaskRevokedError")
    assert data["result"] is None


async def test_an_owner_in_settings_gets_its_tasks_finals(hooks: Hooks) -> None:
    # No webhook in owned_by: TASKCAST_WEBHOOKS names the owner's.
    task_id = start(hooks.app, hooks.configured_owner)
    (request,) = await delivered(hooks.receiver, task_id)
    assert request.path == "/owner"
    assert verified(request)["data"]["owner"] == hooks.configured_owner


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://10.0.0.8/", "*"),
        ("https://169.254.169.254/latest/meta-data/", "*"),
        ("https://[::1]/", "*"),
        ("https://0.0.0.0/", "*"),
        ("https://224.0.0.1/", "*"),
        ("https://100.64.0.1/", "*"),
        ("https://localhost/", "*"),
        ("http://1.1.1.1/", "*"),
        ("https://1.1.1.1/", "hooks.example.com"),
        ("https://127.0.0.1:8443/", "127.0.0.1:9443"),
    ],
)
def test_what_is_refused(url: str, allowed: str) -> None:
    with pytest.raises(Refused):
        check_target(url, AllowedHosts.parse(allowed))


def test_what_is_allowed() -> None:
    listed = check_target("http://127.0.0.1:8443/a?b=c", AllowedHosts.parse("127.0.0.1:8443"))
    assert listed.url_at(listed.addresses[0]) == "http://127.0.0.1:8443/a?b=c"
    public = check_target("https://1.1.1.1/", AllowedHosts.parse("*"))
    assert (public.addresses, public.netloc) == (("1.1.1.1",), "1.1.1.1")


@pytest.mark.parametrize(
    "name, value",
    [
        ("TASKCAST_WEBHOOK_ALLOWED_HOSTS", "host:99999"),
        ("TASKCAST_WEBHOOK_ALLOWED_HOSTS", "https://host/path"),
        ("TASKCAST_WEBHOOKS", '{"user/42": "https://example.com/"}'),
        ("TASKCAST_WEBHOOKS", '{"user:42": "ftp://example.com/"}'),
    ],
)
def test_bad_settings_are_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("TASKCAST_").lower()):
        WebhookSettings()
