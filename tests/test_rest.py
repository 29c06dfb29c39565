"""The REST contract against a real uvicorn, a real worker and a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid

import httpx
import pytest
import redis
from starlette.routing import Route

from taskcast.app import create_app
from tests import env
from tests.support import eventually, final, running_server, task_keys, wait_for_state


async def test_progress_task_reports_percent_then_succeeds(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/progress", json={"total": 5, "step_seconds": 0.2})
    assert response.status_code == 202
    links = response.json()
    task_id = links["task_id"]
    assert uuid.UUID(task_id).version == 4
    assert links["status_url"] == f"{client.base_url}/tasks/{task_id}"
    assert (
        links["ws_url"] == f"ws://{client.base_url.host}:{client.base_url.port}/ws/tasks/{task_id}"
    )
    assert response.headers["location"] == links["status_url"]

    running = await wait_for_state(client, task_id, lambda s: s["state"] == "PROGRESS")
    progress = running["progress"]
    assert progress["total"] == 5
    assert 1 <= progress["current"] <= 5
    assert progress["percent"] == progress["current"] * 20.0
    # REST reads one record, with no history: no pace to tell.
    assert (progress["rate"], progress["eta_s"]) == (None, None)

    done = await wait_for_state(client, task_id, final)
    assert done["state"] == "SUCCESS"
    assert done["result"] == {"status": "completed"}
    assert done["progress"] == {
        "current": 5,
        "total": 5,
        "percent": 100.0,
        "message": None,
        "rate": None,
        "eta_s": 0.0,
    }
    assert done["error"] is None


async def test_links_keep_the_root_path_a_proxy_serves_the_service_under() -> None:
    # As behind a proxy that serves the service at /api/ and strips the prefix
    # (uvicorn --root-path /api): links must point at /api/... on the same host.
    async with (
        running_server(create_app(), root_path="/api") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        response = await http.post("/tasks/sleep", json={"seconds": 0})
        assert response.status_code == 202, response.text
        links = response.json()
        host = url.removeprefix("http://")
        assert links["status_url"] == f"{url}/api/tasks/{links['task_id']}"
        assert links["ws_url"] == f"ws://{host}/api/ws/tasks/{links['task_id']}"
        # https at the proxy (X-Forwarded-Proto, from a trusted address): wss.
        response = await http.post(
            "/groups/sleep",
            json={"count": 1, "params": {"seconds": 0}},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert response.status_code == 202, response.text
        group = response.json()
        assert group["status_url"] == f"https://{host}/api/groups/{group['group_id']}"
        assert group["ws_url"] == f"wss://{host}/api/ws/groups/{group['group_id']}"


async def test_sleep_task_returns_the_tutorial_message(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/sleep", json={"seconds": 0.05})
    done = await wait_for_state(client, response.json()["task_id"], final)
    assert (done["state"], done["result"]) == ("SUCCESS", "Task completed after 0.05 seconds")
    assert done["progress"] is None


async def test_empty_body_uses_defaults(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/sleep", content=b"")
    assert response.status_code == 202
    await client.delete(f"/tasks/{response.json()['task_id']}")


async def test_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    missing = await client.get(f"/tasks/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_task"
    malformed = await client.get("/tasks/not-a-uuid")
    assert malformed.status_code == 422
    assert malformed.json() == {
        "error": "invalid_task_id",
        "detail": "task id must be a UUID, got 'not-a-uuid'",
    }
    injected = await client.get("/tasks/*")
    assert injected.status_code == 422


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("sleep", {"seconds": -1}, "seconds"),
        ("sleep", {"seconds": 3601}, "seconds"),
        ("sleep", {"seconds": "5"}, "seconds"),
        ("progress", {"total": 0}, "total"),
        ("progress", {"total": 100_001}, "total"),
        ("progress", {"total": 2.5}, "total"),
        ("progress", {"total": True}, "total"),
        ("progress", {"step_seconds": 61}, "step_seconds"),
        ("progress", {"totl": 5}, "totl"),
        ("email", {"to": "not-an-address", "data": {}}, "to"),
        ("email", {"to": "someone@example", "data": {}}, "to"),
        ("email", {"data": {}}, "to"),
        ("email", {"to": "someone@example.com"}, "data"),
        ("email", {"to": "someone@example.com", "data": [1, 2]}, "data"),
        ("email", {"to": "someone@example.com", "data": {"pad": "x" * 17_000}}, "data"),
        ("email", {"to": "someone@example.com", "data": {}, "cc": "x@example.com"}, "cc"),
    ],
)
async def test_bad_params_are_422_naming_the_field_and_queue_nothing(
    client: httpx.AsyncClient, redis_client: redis.Redis, name: str, body: object, field: str
) -> None:
    before = task_keys(redis_client, env.KEY_PREFIX)
    response = await client.post(f"/tasks/{name}", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == "invalid_params"
    assert error["detail"].startswith(f"{field}: ")
    assert task_keys(redis_client, env.KEY_PREFIX) == before


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 422, "invalid_params"),
        (b'"text"', 422, "invalid_params"),
    ],
)
async def test_malformed_bodies(
    client: httpx.AsyncClient, content: bytes, status: int, code: str
) -> None:
    response = await client.post("/tasks/progress", content=content)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert response.headers["content-type"] == "application/json"


async def test_oversized_bodies_get_413(client: httpx.AsyncClient) -> None:
    big = b'{"total": 5, "pad": "' + b"x" * 70_000 + b'"}'
    declared = await client.post("/tasks/progress", content=big)
    assert declared.status_code == 413
    assert declared.json()["error"] == "payload_too_large"

    async def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b"x" * 10_000

    streamed = await client.post("/tasks/progress", content=chunks())
    assert streamed.status_code == 413


async def test_unknown_task_name_and_routes_are_json_errors(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/tasks/rm-rf", json={})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "unknown_task_name",
        "detail": "no task named 'rm-rf'; known: progress, sleep, email",
    }
    nowhere = await client.get("/nowhere")
    assert (nowhere.status_code, nowhere.json()["error"]) == (404, "not_found")
    wrong_method = await client.put(f"/tasks/{uuid.uuid4()}")
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    expected = {"status": "ready", "redis": "ok", "broker": "ok"}
    assert (ready.status_code, ready.json()) == (200, expected)


async def test_readiness_reports_redis_down() -> None:
    from taskcast.cli.devstack import free_port
    from taskcast.settings import Settings
    from tests.support import demo_app, running_server

    settings = Settings()
    dead = demo_app(result_backend_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(settings=settings, celery_app=dead)
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        # The broker (its own Redis, up) is not what failed.
        assert ready.json() == {"status": "degraded", "redis": "unreachable", "broker": "ok"}
        assert (await http.get("/healthz")).status_code == 200


async def test_openapi_describes_every_route(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    for name in ("sleep", "progress", "email"):
        assert f"/tasks/{name}" in spec["paths"]
        assert f"/groups/{name}" in spec["paths"]
    app = create_app()
    # The {name} routes are documented once per task name.
    documented = set(spec["paths"]) | {"/openapi.json", "/tasks/{name}", "/groups/{name}"}
    for route in app.routes:
        if isinstance(route, Route):  # WebSocket routes are in docs/protocol.md instead
            assert route.path in documented
    progress = spec["components"]["schemas"]["ProgressParams"]["properties"]["total"]
    assert (progress["minimum"], progress["maximum"]) == (1, 100_000)
    # Every reference resolves: the schemas are generated with the paths that use them.
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert refs and refs <= set(spec["components"]["schemas"])
    status = spec["components"]["schemas"]["Status"]
    assert set(status["required"]) == {
        "task_id",
        "state",
        "final",
        "stalled",
        "progress",
        "result",
        "error",
    }


async def test_the_task_list_names_each_task_with_its_parameters(
    client: httpx.AsyncClient,
) -> None:
    listing = (await client.get("/tasks")).json()["tasks"]
    assert [task["name"] for task in listing] == ["progress", "sleep", "email"]
    by_name = {task["name"]: task for task in listing}
    assert by_name["sleep"]["summary"] == "Wait a number of seconds: the tutorial's long task."
    assert by_name["progress"]["params"]["properties"]["total"]["maximum"] == 100_000
    assert by_name["email"]["params"]["required"] == ["to", "data"]


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b'{"x": NaN}', "NaN and Infinity are not JSON"),
        (b'{"x": -Infinity}', "NaN and Infinity are not JSON"),
        (b'{"x": 1e400}', "a number too large to be finite"),
        (b'{"x": ' + b"[" * 500 + b"]" * 500 + b"}", "nested too deeply"),
    ],
)
async def test_what_json_cannot_carry_is_refused_alike_everywhere(
    client: httpx.AsyncClient, redis_client: redis.Redis, data: bytes, said: str
) -> None:
    """A lenient reader takes NaN and 1e400 as floats that nothing can send back; the
    e-mail task's two doors must agree, and say what is wrong."""
    before = task_keys(redis_client, env.KEY_PREFIX)
    body = b'{"to": "ada@example.com", "data": ' + data + b"}"
    direct = await client.post("/tasks/email", content=body)
    tutorial = await client.post(
        "/process-and-email/", params={"email": "ada@example.com"}, content=data
    )
    for response in (direct, tutorial):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_json"
        assert said in response.json()["detail"]
    assert task_keys(redis_client, env.KEY_PREFIX) == before


async def test_a_client_that_leaves_mid_request_is_no_server_error(
    base_url: str, caplog: pytest.LogCaptureFixture, server_errors: list[logging.LogRecord]
) -> None:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with caplog.at_level(logging.INFO, logger="taskcast"):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /tasks/sleep HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"seconds"'
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await eventually(
            lambda: caplog.messages,
            lambda said: "POST /tasks/sleep: the client left before its request was read" in said,
        )
    # server_errors: nothing logged as an error (it was two tracebacks).
