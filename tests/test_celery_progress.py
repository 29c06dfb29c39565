"""celery-progress's endpoints: its JSON per state, over REST and its WebSocket variant,
with taskcast's auth and rules (the browser tests run its own JavaScript against
them)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from celery import states as celery_states

from taskcast.api.celery_progress import group_progress, task_progress
from taskcast.app import create_app
from taskcast.status import Status, decode_status
from tests.support import (
    WorkerProcess,
    eventually,
    read_until_closed,
    recv_json,
    running_server,
    session_app,
    settings_with,
    submit,
    ws_connect,
)


def store(state: str, result: Any, **extra: Any) -> str:
    """A record written as a worker writes it; its task id."""
    task_id = str(uuid.uuid4())
    session_app().backend.store_result(task_id, result, state, **extra)
    return task_id


def status_of(state: str, result: Any) -> Status:
    return decode_status("t", json.dumps({"status": state, "result": result}).encode())


def test_each_state_reads_as_celery_progress_reads_it() -> None:
    waiting = {"pending": True, "current": 0, "total": 100, "percent": 0, "description": ""}
    for state in ("SENT", "PENDING", "RECEIVED"):
        assert task_progress(status_of(state, None)) == {
            "state": "PENDING",
            "complete": False,
            "success": None,
            "progress": waiting,
        }
    assert task_progress(status_of("STARTED", None))["progress"] == {**waiting, "pending": False}
    full = {"pending": False, "current": 100, "total": 100, "percent": 100}
    assert task_progress(status_of("SUCCESS", {"rows": 3})) == {
        "state": "SUCCESS",
        "complete": True,
        "success": True,
        "progress": full,
        "result": {"rows": 3},
    }
    failure = {"exc_type": "ValueError", "exc_message": ["bad row 7"], "exc_module": "builtins"}
    assert task_progress(status_of("FAILURE", failure)) == {
        "state": "FAILURE",
        "complete": True,
        "success": False,
        "progress": full,
        "result": "bad row 7",
    }
    revoked = {"exc_type": "TaskRevokedError", "exc_message": ["revoked"]}
    assert task_progress(status_of("REVOKED", revoked))["result"] == "Task revoked"
    assert task_progress(status_of("REVOKED", revoked))["success"] is False
    retry = task_progress(status_of("RETRY", failure))
    assert (retry["complete"], retry["success"]) == (True, False)
    assert retry["result"] == {"next_retry_seconds": "Unknown", "message": "bad row 7..."}


def test_progress_in_every_convention_fills_percent_and_description() -> None:
    conventions = [
        # taskcast's ProgressReporter and Celery's documented meta.
        ({"current": 3, "total": 12, "message": "rows"}, (3, 12, 25.0, "rows")),
        ({"current": 3, "total": 12}, (3, 12, 25.0, "")),
        # celery-progress's own ProgressRecorder.
        (
            {"pending": False, "current": 1, "total": 4, "percent": 25.0, "description": "x"},
            (1, 4, 25.0, "x"),
        ),
        # A lone percent, and a status text.
        ({"percent": 40, "status": "thinking"}, (40.0, 100, 40.0, "thinking")),
    ]
    for meta, (current, total, percent, description) in conventions:
        shown = task_progress(status_of("PROGRESS", meta))
        assert shown == {
            "state": "PROGRESS",
            "complete": False,
            "success": None,
            "progress": {
                "pending": False,
                "current": current,
                "total": total,
                "percent": percent,
                "description": description,
            },
        }, meta
    # A state of the task's own naming, with progress, is running (not celery-progress's
    # "Unknown state" failure).
    custom = task_progress(status_of("UPLOADING", {"current": 1, "total": 2}))
    assert (custom["state"], custom["complete"], custom["progress"]["percent"]) == (
        "UPLOADING",
        False,
        50.0,
    )


def test_a_group_sums_its_members_bars() -> None:
    members = [
        task_progress(status_of("SUCCESS", 1)),
        task_progress(status_of("PROGRESS", {"current": 5, "total": 10})),
        task_progress(status_of("SENT", None)),
    ]
    assert group_progress(members) == {
        "complete": False,
        "success": False,
        "progress": {"total": 210, "current": 105, "percent": 50.0},
    }
    ended = [task_progress(status_of("SUCCESS", 1)), task_progress(status_of("SUCCESS", 2))]
    assert group_progress(ended)["complete"] and group_progress(ended)["success"]


async def test_rest_answers_its_json_and_never_caches(client: httpx.AsyncClient) -> None:
    task_id = store(celery_states.SUCCESS, {"rows": 3})
    response = await client.get(f"/celery-progress/{task_id}/")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["result"] == {"rows": 3}
    task_id = store("PROGRESS", {"current": 2, "total": 8, "message": "copying"})
    body = (await client.get(f"/celery-progress/{task_id}/")).json()
    assert body["progress"] == {
        "pending": False,
        "current": 2,
        "total": 8,
        "percent": 25.0,
        "description": "copying",
    }


async def test_unknown_and_invalid_ids_follow_taskcast_s_rules(client: httpx.AsyncClient) -> None:
    unknown = await client.get(f"/celery-progress/{uuid.uuid4()}/")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_task"
    invalid = await client.get("/celery-progress/not-a-task/")
    assert invalid.status_code == 422
    assert invalid.json()["error"] == "invalid_task_id"
    assert (await client.get(f"/celery-progress/g/{uuid.uuid4()}/")).status_code == 404


async def test_a_group_over_rest_as_its_members_run(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    response = await client.post(
        "/groups/progress", json={"count": 3, "params": {"total": 2, "step_seconds": 0.05}}
    )
    assert response.status_code == 202, response.text
    group_id = response.json()["group_id"]
    first = (await client.get(f"/celery-progress/g/{group_id}/")).json()
    assert set(first) == {"complete", "success", "progress"}
    assert set(first["progress"]) == {"total", "current", "percent"}

    async def ended() -> dict[str, Any]:
        body: dict[str, Any] = (await client.get(f"/celery-progress/g/{group_id}/")).json()
        return body

    last = await eventually(ended, lambda body: body["complete"])
    assert last == {
        "complete": True,
        "success": True,
        "progress": {"total": 300, "current": 300, "percent": 100.0},
    }


async def test_the_websocket_answers_each_check_and_every_change_until_the_final(
    base_url: str, client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    task_id = await submit(client, "progress", total=4, step_seconds=0.1)
    async with ws_connect(base_url, f"/ws/progress/{task_id}/") as ws:
        await ws.send('{"type": "check_task_completion"}')
        first = await recv_json(ws)
        assert first["complete"] is False and "progress" in first
        # Anything else is told what was expected; the socket stays open.
        await ws.send('{"type": "something_else"}')
        messages, code = await read_until_closed(ws)
    errors = [message for message in messages if message.get("type") == "error"]
    assert [error["code"] for error in errors] == ["invalid_message"]
    bars = [message for message in [first, *messages] if "complete" in message]
    assert bars[-1] == {
        "state": "SUCCESS",
        "complete": True,
        "success": True,
        "progress": {"pending": False, "current": 100, "total": 100, "percent": 100},
        "result": {"status": "completed"},
    }
    currents = [bar["progress"]["current"] for bar in bars if bar["state"] == "PROGRESS"]
    assert currents == sorted(currents)
    assert code == 1000


async def test_a_failing_task_shows_its_error_over_the_websocket(
    base_url: str, client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    task_id = await submit(client, "progress", total=3, step_seconds=0.05, fail_at=2)
    async with ws_connect(base_url, f"/ws/progress/{task_id}/") as ws:
        await ws.send('{"type": "check_task_completion"}')
        messages, code = await read_until_closed(ws)
    assert messages[-1]["state"] == "FAILURE"
    assert (messages[-1]["complete"], messages[-1]["success"]) == (True, False)
    assert messages[-1]["result"] == "failed at step 2 of 3"
    assert code == 1000


async def test_an_unknown_task_over_the_websocket_is_said_and_closed(base_url: str) -> None:
    async with ws_connect(base_url, f"/ws/progress/{uuid.uuid4()}/") as ws:
        await ws.send('{"type": "check_task_completion"}')
        messages, code = await read_until_closed(ws)
    assert [message["code"] for message in messages] == ["unknown_task"]
    assert code == 4404


@pytest.fixture
async def secured() -> Any:
    app = create_app(settings=settings_with(secret="s" * 40, api_keys=("key-" + "k" * 30,)))
    async with running_server(app) as url:
        yield url


async def test_with_tokens_on_each_path_needs_the_task_s_token(secured: str) -> None:
    task_id = store(celery_states.SUCCESS, 7)
    group_id = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=secured) as http:
        assert (await http.get(f"/celery-progress/{task_id}/")).status_code == 401
        assert (await http.get(f"/celery-progress/g/{group_id}/")).status_code == 401
        headers = {"Authorization": "Bearer key-" + "k" * 30}
        allowed = await http.get(f"/celery-progress/{task_id}/", headers=headers)
        assert allowed.json()["result"] == 7
    async with ws_connect(secured, f"/ws/progress/{task_id}/") as ws:
        messages, code = await read_until_closed(ws)
    assert (messages[0]["code"], code) == ("unauthorized", 4401)
