"""The tutorial's paths answer in the tutorial's shapes (``../shared/seed``), with the
percent really computed."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import redis

from tests import env
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
    assert list(body) == ["task_id", "status"]
    assert body["status"] == "Task started"
    done = await wait_for_state(client, body["task_id"], final)
    assert done["state"] == "SUCCESS"
    assert await tutorial_status(client, body["task_id"]) == {
        "state": "SUCCESS",
        "result": "Task completed after 0 seconds",
    }


async def test_progress_through_the_tutorial_paths(client: httpx.AsyncClient) -> None:
    response = await client.post("/process-data-with-status/", params={"time": 2})
    assert response.status_code == 200
    body = response.json()
    assert (list(body), body["message"]) == (["message", "task_id"], "Processing started")
    task_id = body["task_id"]
    queued_or_running = await tutorial_status(client, task_id)
    assert queued_or_running in (
        {"state": "PENDING", "progress": 0},
        {"state": "STARTED", "info": ""},
        {"state": "PROGRESS", "progress": 50.0},
    )
    running = await eventually(
        lambda: tutorial_status(client, task_id), lambda s: s["state"] == "PROGRESS"
    )
    # The tutorial always showed 0 here: it read a percent its task never wrote.
    assert running == {"state": "PROGRESS", "progress": 50.0}
    done = await eventually(
        lambda: tutorial_status(client, task_id), lambda s: s["state"] == "SUCCESS"
    )
    assert done == {"state": "SUCCESS", "result": {"status": "completed"}}


async def test_queued_reads_as_pending_and_other_states_as_info_text(
    client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    response = await client.post("/tasks/sleep", json={"seconds": 30})
    task_id = response.json()["task_id"]
    revoked = await client.delete(f"/tasks/{task_id}")
    assert revoked.status_code == 202
    assert await tutorial_status(client, task_id) == {"state": "REVOKED", "info": "revoked"}
    # A queued task (its record says SENT) is the tutorial's PENDING.
    from taskcast_celery.demo.celery import app

    parked = app.send_task("taskcast.sleep", kwargs={"seconds": 0}, queue=queue)
    redis_client.delete(f"{env.KEY_PREFIX}{queue}")
    assert await tutorial_status(client, parked.id) == {"state": "PENDING", "progress": 0}
    failed = await client.post(
        "/tasks/progress", json={"total": 1, "step_seconds": 0, "fail_at": 1}
    )
    failure = await wait_for_state(client, failed.json()["task_id"], final)
    assert failure["state"] == "FAILURE"
    assert await tutorial_status(client, failed.json()["task_id"]) == {
        "state": "FAILURE",
        "info": "failed at step 1 of 1",
    }


async def test_process_and_email_answers_message_and_task_id(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/process-and-email/", params={"email": "ada@example.com"}, json={"rows": 2}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (list(body), body["message"]) == (["message", "task_id"], "Processing started")
    uuid.UUID(body["task_id"])


async def test_process_data_with_status_takes_the_tutorial_default_time(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/process-data-with-status/")
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    running = await eventually(
        lambda: client.get(f"/tasks/{task_id}"),
        lambda r: r.json()["progress"] is not None,
        within=15,
    )
    assert running.json()["progress"]["total"] == 100
    assert (await client.delete(f"/tasks/{task_id}")).status_code == 202


async def test_unknown_task_is_404_not_pending(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/task-status/{uuid.uuid4()}")
    assert (response.status_code, response.json()["error"]) == (404, "unknown_task")


@pytest.mark.parametrize(
    ("method", "path", "params", "field"),
    [
        ("POST", "/process-data-with-status/", {"time": 0}, "time"),
        ("POST", "/process-data-with-status/", {"time": 3601}, "time"),
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


async def test_in_request_jobs_cannot_starve_dispatch(base_url: str) -> None:
    """Forty in-request jobs once held every worker thread of the service (40 is anyio's
    default), and a dispatch waited for one of them to end. Two run now; the rest are
    refused at once, and a dispatch goes through while the two still run."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
        jobs = [
            asyncio.create_task(http.get("/sync-process/", params={"seconds": 4}))
            for _ in range(40)
        ]
        refused = await eventually(
            lambda: [job for job in jobs if job.done()],
            lambda done: len(done) >= 38,
            within=10,
        )
        answers = [job.result() for job in refused]
        assert {answer.status_code for answer in answers} == {503}
        assert answers[0].json()["error"] == "busy"
        assert answers[0].headers["retry-after"] == "1"
        dispatched = await http.post("/tasks/sleep", json={"seconds": 0})
        assert dispatched.status_code == 202
        # Still running: the dispatch did not wait for a thread of theirs.
        running = [job for job in jobs if not job.done()]
        assert len(running) == 2
        finished = await asyncio.gather(*running)
    assert [answer.status_code for answer in finished] == [200, 200]
