"""The e-mail job: the real ``mailtrap`` client, over real HTTPS, to a fake Mailtrap.

Most tests run the task on a worker of this module's own (its own queue, its log in a
file) so that they can read what the worker logged; the API tests go through the
session's service and worker. Every worker sends to the session's fake Mailtrap.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from taskcast_celery import keys
from taskcast_celery.demo import keys as demo_keys
from tests import env
from tests.mailtrap_server import FakeMailtrap
from tests.support import (
    Published,
    WorkerProcess,
    eventually,
    final,
    running_server,
    session_app,
    settings_with,
    task_keys,
    wait_for_state,
)

QUEUE = f"taskcast-test-mail-{uuid.uuid4().hex[:8]}"
DATA = {"name": "Ada", "rows": [1, 2, 3]}
TEXT = (
    "Your data has been processed (2 fields):\n\n"
    '{\n  "name": "Ada",\n  "rows": [\n    1,\n    2,\n    3\n  ]\n}\n'
)


def expected_request(to: str, task_id: str, text: str = TEXT) -> dict[str, Any]:
    """The JSON body Mailtrap's sending API gets for an e-mail task."""
    return {
        "from": {"email": env.MAIL_FROM, "name": env.MAIL_FROM_NAME},
        "to": [{"email": to}],
        "subject": "Your data has been processed",
        "text": text,
        "custom_variables": {"taskcast_task_id": task_id},
    }


@pytest.fixture(scope="module")
def mail_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mail") / "worker.log"


@pytest.fixture(scope="module")
def mail_worker(
    mail_log: Path, redis_client: redis.Redis, mailtrap_server: FakeMailtrap
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(concurrency=1, queues=QUEUE, logfile=str(mail_log))
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def send_email(to: str, task_id: str, queue: str = QUEUE) -> None:
    session_app().send_task(
        "taskcast.email", kwargs={"to": to, "data": DATA}, task_id=task_id, queue=queue
    )


async def run_email(
    to: str, queue: str = QUEUE, task_id: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Send the e-mail task to ``queue``; its id, and every record it published."""
    task_id = task_id or str(uuid.uuid4())
    async with Published(env.REDIS_URL, env.KEY_PREFIX, task_id) as published:
        send_email(to, task_id, queue)
        records = await published.until_final(within=30)
    return task_id, records


def states(records: list[dict[str, Any]]) -> list[str]:
    return [record["status"] for record in records]


def read_log(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def wait_for_runs(log: Path, task_id: str, runs: int) -> None:
    """Wait until the worker logged ``runs`` ends of ``task_id`` (a final state hides more)."""
    await eventually(
        lambda: asyncio.to_thread(read_log, log),
        lambda text: text.count(f"[{task_id}] succeeded") >= runs,
        within=30,
    )


async def test_email_is_sent_with_the_exact_request(
    mail_worker: WorkerProcess, mailtrap: FakeMailtrap, redis_client: redis.Redis
) -> None:
    task_id, records = await run_email("ada@example.com")
    assert records[-1]["status"] == "SUCCESS"
    assert records[-1]["result"] == {"status": "sent", "message_ids": ["msg-1"]}
    stages = [r["result"]["message"] for r in records if r["status"] == "PROGRESS"]
    assert stages == ["processing", "sending"]

    [request] = mailtrap.received
    assert (request.method, request.path) == ("POST", "/api/send")
    assert request.headers["authorization"] == f"Bearer {env.MAILTRAP_TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == expected_request("ada@example.com", task_id)
    # Recorded, so that no later run of this task sends it again.
    sent = redis_client.get(demo_keys.email_sent_key(env.KEY_PREFIX, task_id))
    assert sent is not None and json.loads(sent) == ["msg-1"]


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_a_transient_answer_is_retried_and_one_email_goes_out(
    mail_worker: WorkerProcess, mail_log: Path, mailtrap: FakeMailtrap, status: int
) -> None:
    mailtrap.answer((status, {"errors": ["try again later"]}))
    task_id, records = await run_email("ada@example.com")
    assert states(records)[-1] == "SUCCESS"
    assert states(records).count("RETRY") == 1
    retry = next(record for record in records if record["status"] == "RETRY")
    assert retry["result"]["exc_type"] == "MailUnavailable"
    assert retry["result"]["exc_message"] == [
        f"Mailtrap could not take the e-mail now (HTTP {status}: try again later)"
    ]
    # Asked twice, accepted once: the first answer was a refusal, not a delivery.
    first, second = mailtrap.received
    assert first.body == second.body == expected_request("ada@example.com", task_id)
    assert records[-1]["result"] == {"status": "sent", "message_ids": ["msg-1"]}
    assert f"[{task_id}] retry: Retry in" in read_log(mail_log)


@pytest.mark.parametrize(
    ("status", "errors", "message"),
    [
        (
            401,
            ["Unauthorized: token {token} is not valid"],
            "Mailtrap refused the API token (HTTP 401: Unauthorized: token [redacted] is not "
            "valid); check MAILTRAP_API_TOKEN",
        ),
        (
            400,
            {"to": ["is invalid"], "token": "{token}"},
            "Mailtrap refused the e-mail (HTTP 400: to: is invalid; token: [redacted])",
        ),
        (
            403,
            ["Sending domain not verified"],
            "Mailtrap refused the e-mail (HTTP 403: Sending domain not verified)",
        ),
        # Echoed in other spellings: shouted, and percent-encoded (upper- and lower-case).
        (
            401,
            ["TOKEN {TOKEN} IS NOT VALID"],
            "Mailtrap refused the API token (HTTP 401: TOKEN [redacted] IS NOT VALID); check "
            "MAILTRAP_API_TOKEN",
        ),
        (
            400,
            ["bad request to /send?token={token%}", "or {token%lower}"],
            "Mailtrap refused the e-mail (HTTP 400: bad request to /send?token=[redacted]; or "
            "[redacted])",
        ),
    ],
)
async def test_a_permanent_refusal_fails_at_once_and_never_shows_the_token(
    mail_worker: WorkerProcess,
    mail_log: Path,
    mailtrap: FakeMailtrap,
    client: httpx.AsyncClient,
    redis_client: redis.Redis,
    status: int,
    errors: Any,
    message: str,
) -> None:
    # The fake server even echoes the token back, as a careless API might.
    token = env.MAILTRAP_TOKEN
    encoded = quote(token, safe="")
    spellings = {
        "{token}": token,
        "{TOKEN}": token.upper(),
        "{token%}": encoded,
        "{token%lower}": re.sub("%[0-9A-F]{2}", lambda escape: escape.group().lower(), encoded),
    }
    text = json.dumps(errors)
    for placeholder, spelling in spellings.items():
        text = text.replace(placeholder, spelling)
    echoed = json.loads(text)
    mailtrap.answer((status, {"errors": echoed}))
    task_id, records = await run_email("ada@example.com")
    assert "RETRY" not in states(records)
    assert len(mailtrap.received) == 1
    done = (await client.get(f"/tasks/{task_id}")).json()
    assert done["state"] == "FAILURE"
    assert done["error"] == {"type": "MailRejected", "message": message}

    raw_record = redis_client.get(keys.task_meta_key(env.KEY_PREFIX, task_id))
    assert raw_record is not None
    for spelling in spellings.values():
        assert spelling.encode() not in raw_record  # result and traceback alike
        assert spelling not in json.dumps(done)
    log = await eventually(
        lambda: asyncio.to_thread(read_log, mail_log), lambda text: f"[{task_id}] raised" in text
    )
    assert message in log
    assert not any(spelling in log for spelling in spellings.values())


async def test_connection_refused_is_retried_then_fails_clearly(
    client: httpx.AsyncClient, redis_client: redis.Redis, tmp_path: Path
) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    queue = f"taskcast-test-refused-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    worker = WorkerProcess(
        concurrency=1,
        env={**os.environ, "MAILTRAP_API_HOST": closed},
        queues=queue,
        logfile=str(log),
    )
    worker.start()
    try:
        task_id, records = await run_email("ada@example.com", queue=queue)
    finally:
        worker.stop()
    # TASKCAST_MAIL_MAX_RETRIES is 2 in tests: three attempts in all.
    assert states(records).count("RETRY") == 2
    done = (await client.get(f"/tasks/{task_id}")).json()
    assert done["state"] == "FAILURE"
    assert done["error"] == {
        "type": "MailUnavailable",
        "message": f"could not reach Mailtrap at {closed}: Connection refused; "
        "gave up after 3 attempts",
    }
    assert redis_client.get(demo_keys.email_sent_key(env.KEY_PREFIX, task_id)) is None
    assert env.MAILTRAP_TOKEN not in read_log(log)


async def test_a_redelivered_task_that_had_sent_does_not_send_again(
    mail_worker: WorkerProcess, mailtrap: FakeMailtrap, redis_client: redis.Redis
) -> None:
    # The worker died after Mailtrap accepted the e-mail and the record was written,
    # but before the task ended: the broker redelivers its message.
    task_id = str(uuid.uuid4())
    redis_client.set(demo_keys.email_sent_key(env.KEY_PREFIX, task_id), json.dumps(["msg-earlier"]))
    _, records = await run_email("ada@example.com", task_id=task_id)
    assert records[-1]["status"] == "SUCCESS"
    assert records[-1]["result"] == {"status": "sent", "message_ids": ["msg-earlier"]}
    assert mailtrap.received == []


async def test_running_a_task_again_sends_its_email_once(
    mail_worker: WorkerProcess, mail_log: Path, mailtrap: FakeMailtrap
) -> None:
    task_id, records = await run_email("ada@example.com")
    assert records[-1]["result"] == {"status": "sent", "message_ids": ["msg-1"]}
    send_email("ada@example.com", task_id)
    await wait_for_runs(mail_log, task_id, runs=2)
    assert len(mailtrap.received) == 1


async def test_without_a_token_dev_mode_keeps_email_in_the_dev_outbox(
    client: httpx.AsyncClient, mailtrap: FakeMailtrap, redis_client: redis.Redis, tmp_path: Path
) -> None:
    queue = f"taskcast-test-outbox-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    dev_env = {k: v for k, v in os.environ.items() if k != "MAILTRAP_API_TOKEN"}
    dev_env["TASKCAST_DEV"] = "1"
    worker = WorkerProcess(concurrency=1, env=dev_env, queues=queue, logfile=str(log))
    worker.start()
    try:
        first, records = await run_email("ada@example.com", queue=queue)
        # Delivered again: the outbox, too, gets each task's e-mail once.
        send_email("ada@example.com", first, queue)
        await wait_for_runs(log, first, runs=2)
        second, _ = await run_email("grace@example.com", queue=queue)
    finally:
        worker.stop()
    [message_id] = records[-1]["result"]["message_ids"]
    assert message_id.startswith("dev-")
    assert mailtrap.received == []

    dev_settings = settings_with(dev=True)
    async with (
        running_server(create_app(settings=dev_settings)) as url,
        httpx.AsyncClient() as http,
    ):
        outbox = (await http.get(f"{url}/dev/outbox")).json()["messages"]
    assert [entry["task_id"] for entry in outbox] == [second, first]  # newest first
    entry = outbox[1]
    assert entry.pop("sent_at")
    assert entry == {
        "message_id": message_id,
        "task_id": first,
        "from": f"{env.MAIL_FROM_NAME} <{env.MAIL_FROM}>",
        "to": "ada@example.com",
        "subject": "Your data has been processed",
        "text": TEXT,
    }
    assert f"dev outbox: e-mail {message_id} to ada@example.com" in read_log(log)

    # Outside dev mode the route does not exist.
    absent = await client.get("/dev/outbox")
    assert (absent.status_code, absent.json()["error"]) == (404, "not_found")


async def test_post_tasks_email_reports_its_stages_and_sends(
    client: httpx.AsyncClient, mailtrap: FakeMailtrap
) -> None:
    response = await client.post("/tasks/email", json={"to": "ada@example.com", "data": DATA})
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    done = await wait_for_state(client, task_id, final)
    assert done["state"] == "SUCCESS"
    assert done["result"] == {"status": "sent", "message_ids": ["msg-1"]}
    assert done["progress"] == {
        "current": 2,
        "total": 2,
        "percent": 100.0,
        # Done: "sending" is no longer what it is doing.
        "message": None,
        "rate": None,
        "eta_s": 0.0,
    }
    [request] = mailtrap.received
    assert request.body == expected_request("ada@example.com", task_id)


async def test_the_tutorial_path_queues_the_email_job(
    client: httpx.AsyncClient, mailtrap: FakeMailtrap
) -> None:
    response = await client.post(
        "/process-and-email/", params={"email": "ada@example.com"}, json={"name": "Ada"}
    )
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["message", "task_id"]
    assert body["message"] == "Processing started"
    done = await wait_for_state(client, body["task_id"], final)
    assert done["state"] == "SUCCESS"
    [request] = mailtrap.received
    text = 'Your data has been processed (1 field):\n\n{\n  "name": "Ada"\n}\n'
    assert request.body == expected_request("ada@example.com", body["task_id"], text)


@pytest.mark.parametrize(
    ("params", "content", "status", "code", "field"),
    [
        ({"email": "not-an-address"}, b"{}", 422, "invalid_query", "email"),
        ({}, b"{}", 422, "invalid_query", "email"),
        ({"email": "ada@example.com"}, b"[1, 2]", 422, "invalid_params", "data"),
        ({"email": "ada@example.com"}, b"", 422, "invalid_params", "data"),
        (
            {"email": "ada@example.com"},
            b'{"pad": "' + b"x" * 17_000 + b'"}',
            422,
            "invalid_params",
            "data",
        ),
        ({"email": "ada@example.com"}, b"{nope", 400, "invalid_json", None),
    ],
)
async def test_the_tutorial_path_refuses_bad_input_and_queues_nothing(
    client: httpx.AsyncClient,
    redis_client: redis.Redis,
    params: dict[str, str],
    content: bytes,
    status: int,
    code: str,
    field: str | None,
) -> None:
    before = task_keys(redis_client, env.KEY_PREFIX)
    response = await client.post("/process-and-email/", params=params, content=content)
    assert (response.status_code, response.json()["error"]) == (status, code)
    if field is not None:
        assert response.json()["detail"].startswith(f"{field}: ")
    assert task_keys(redis_client, env.KEY_PREFIX) == before
