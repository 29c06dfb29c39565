"""The tutorial's paths answer in the tutorial's shapes, with a real percent."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support import eventually, final, wait_for_state


async def tutorial_status(client: httpx.AsyncClient, task_id: str) -> dict[str, object]:
    response = await client.get(f"/task-status/{task_id}")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_sync_process_runs_the_job_in_the_request(client: httpx.AsyncClient) -> None:
    response = await client.get("/sync-process/", params={"seconds": 0.01})
    assert response.json() == {"message": "Task completed after 0.01 seconds"}


async def test_async_process_queues_the_job(client: httpx.AsyncClient) -> None:
    response = await client.get("/async-process/", params={"seconds": 0})
    body = response.json()
    assert body["message"] == "Task started"
    done = await wait_for_state(client, body["task_id"], final)
    assert done["state"] == "SUCCESS"
    assert await tutorial_status(client, body["task_id"]) == {
        "state": "SUCCESS",
        "current": 1,
        "total": 1,
        "percent": 100.0,
        "result": "Task completed after 0 seconds",
    }


async def test_progress_through_the_tutorial_paths(client: httpx.AsyncClient) -> None:
    response = await client.post("/process-data-with-status/", params={"time": 2})
    task_id = response.json()["task_id"]
    assert list(response.json()) == ["task_id"]
    queued_or_running = await tutorial_status(client, task_id)
    assert queued_or_running["state"] in {"PENDING", "STARTED", "PROGRESS"}
    running = await eventually(
        lambda: tutorial_status(client, task_id), lambda s: s["state"] == "PROGRESS"
    )
    # The tutorial always showed 0 here: it read a percent its task never wrote.
    assert running == {"state": "PROGRESS", "current": 1, "total": 2, "percent": 50.0}
    done = await eventually(
        lambda: tutorial_status(client, task_id), lambda s: s["state"] == "SUCCESS"
    )
    assert done == {
        "state": "SUCCESS",
        "current": 2,
        "total": 2,
        "percent": 100.0,
        "result": {"status": "completed"},
    }


async def test_queued_reads_as_pending_and_revoked_as_text(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/sleep", json={"seconds": 30})
    task_id = response.json()["task_id"]
    assert (await client.delete(f"/tasks/{task_id}")).status_code == 202
    assert await tutorial_status(client, task_id) == {"state": "REVOKED", "status": "revoked"}


async def test_unknown_task_is_404_not_pending(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/task-status/{uuid.uuid4()}")
    assert (response.status_code, response.json()["error"]) == (404, "unknown_task")


@pytest.mark.parametrize(
    ("method", "path", "params", "field"),
    [
        ("POST", "/process-data-with-status/", {}, "time"),
        ("POST", "/process-data-with-status/", {"time": 0}, "time"),
        ("POST", "/process-data-with-status/", {"time": "abc"}, "time"),
        ("GET", "/async-process/", {"seconds": 61}, "seconds"),
        ("GET", "/sync-process/", {"seconds": -1}, "seconds"),
        ("GET", "/async-process/", {"sconds": 1}, "sconds"),
    ],
)
async def test_bad_queries_are_422_naming_the_parameter(
    client: httpx.AsyncClient, method: str, path: str, params: dict[str, object], field: str
) -> None:
    response = await client.request(method, path, params=params)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_query"
    assert response.json()["detail"].startswith(f"{field}: ")
