"""Auth (docs/security.md): API keys, watch tokens and allowed origins, on a real uvicorn
serving an app with all three set, a real worker and Redis; and the token functions."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from taskcast import client as taskcast
from taskcast.app import create_app
from taskcast.auth import Auth
from taskcast.settings import Settings
from taskcast.tokens import sign, sign_watch_token, verify
from tests.support import (
    WorkerProcess,
    eventually,
    read_until_closed,
    recv_json,
    run_cli,
    running_server,
    settings_with,
    ws_connect,
)

KEY = "key-" + secrets.token_urlsafe(24)
OTHER_KEY = "key-" + secrets.token_urlsafe(24)
SECRET = secrets.token_urlsafe(48)
ORIGIN = "https://app.taskcast.test"
UNAUTHORIZED_HEADER = 'Bearer realm="taskcast"'


def settings(**changes: Any) -> Settings:
    return settings_with(**changes)


@pytest.fixture(scope="module")
async def secured(worker: WorkerProcess) -> AsyncIterator[str]:
    """A server with API keys, a secret and one allowed origin; its base URL."""
    app = create_app(
        settings=settings(
            api_keys=(KEY, OTHER_KEY),
            secret=SECRET,
            allowed_origins=(ORIGIN,),
            # Checked host names: only so may the service's own pages count as allowed.
            allowed_hosts=("127.0.0.1", "localhost"),
        )
    )
    async with running_server(app) as url:
        yield url


@pytest.fixture
async def http(secured: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secured, timeout=10) as client:
        yield client


def keyed(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def dispatch(http: httpx.AsyncClient, name: str, **params: Any) -> dict[str, str]:
    response = await http.post(f"/tasks/{name}", json=params, headers=keyed())
    assert response.status_code == 202, response.text
    links: dict[str, str] = response.json()
    return links


async def until_final(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        response = await http.get(f"/tasks/{task_id}", headers=keyed())
        status: dict[str, Any] = response.json()
        return status

    return await eventually(probe, lambda status: bool(status["final"]))


def assert_unauthorized(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == UNAUTHORIZED_HEADER
    body: dict[str, Any] = response.json()
    assert body["error"] == "unauthorized"
    for secret in (KEY, OTHER_KEY, SECRET):
        assert secret not in response.text
    return body


# -- the token functions -------------------------------------------------------------

SECRET_BYTES = SECRET.encode()
TASK = "5d4f6c1e-9b8a-4e2f-8c3d-1a2b3c4d5e6f"


def test_a_token_opens_its_task_until_it_expires() -> None:
    token = sign(SECRET_BYTES, TASK, expires_at=2_000_000_000)
    version, expires, mac = token.split(".")
    assert (version, expires, len(mac)) == ("v1", "2000000000", 43)
    # The task id is bound by the MAC, not carried.
    assert TASK not in token
    assert verify(SECRET_BYTES, token, TASK, now=1_999_999_999.9)
    assert not verify(SECRET_BYTES, token, TASK, now=2_000_000_000)
    assert not verify(SECRET_BYTES, token, str(uuid.uuid4()), now=0)
    assert not verify(b"another secret of the same length......", token, TASK, now=0)


def test_no_token_outlives_the_service_s_ttl_whoever_minted_it() -> None:
    """TASKCAST_TOKEN_TTL 3600: a token minted for a day (``sign_watch_token``'s old
    default) was accepted; now a token is accepted only while it expires within the TTL
    (and a minute for the minting machine's clock) of the moment it is shown."""
    auth = Auth(settings(secret=SECRET), 3600)
    assert not auth.may_watch(TASK, sign_watch_token(TASK, secret=SECRET, ttl=86_400), None)
    assert auth.may_watch(TASK, sign_watch_token(TASK, secret=SECRET), None)
    # Minted where the clock runs 30 s ahead: still within the allowance.
    ahead = sign(SECRET_BYTES, TASK, expires_at=int(time.time()) + 3630)
    assert auth.may_watch(TASK, ahead, None)
    assert auth.may_watch(TASK, auth.token(TASK), None)
    shorter = Auth(settings(secret=SECRET), 600)
    assert not shorter.may_watch(TASK, sign_watch_token(TASK, secret=SECRET), None)


def test_a_tampered_or_malformed_token_opens_nothing() -> None:
    token = sign(SECRET_BYTES, TASK, expires_at=2_000_000_000)
    for i, char in enumerate(token):
        for other in {"A", "0", "-", "."} - {char}:
            tampered = token[:i] + other + token[i + 1 :]
            assert not verify(SECRET_BYTES, tampered, TASK, now=0), tampered
    longer = sign(SECRET_BYTES, TASK, expires_at=2_000_000_001)
    # A later expiry with the old MAC, or the same expiry spelled another way.
    assert not verify(SECRET_BYTES, f"v1.2000000001.{token.split('.')[2]}", TASK, now=0)
    assert not verify(SECRET_BYTES, "v1.02000000000." + token.split(".")[2], TASK, now=0)
    assert verify(SECRET_BYTES, longer, TASK, now=0)
    for junk in ["", "v1", "v1..", "v1.x.y", "v2" + token[2:], token + ".", " " + token,
                 "v1.²." + token.split(".")[2], token + "A" * 200]:  # fmt: skip
        assert not verify(SECRET_BYTES, junk, TASK, now=0), junk


def test_keys_and_macs_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = ("first-key-0123456789", "second-key-0123456789", "third-key-0123456789")
    auth = Auth(settings(api_keys=keys, secret=SECRET), 86_400)
    # Found first or not at all, every key is compared, and as equal-length digests.
    assert auth.is_api_key(keys[0])
    assert not auth.is_api_key("nope")
    assert len(compared) == 6
    assert {len(a) for pair in compared for a in pair} == {32}
    compared.clear()
    token = auth.token(TASK)
    assert token is not None
    assert auth.may_watch(TASK, token, None)
    assert len(compared) == 1


def test_settings_read_the_auth_variables_and_keep_them_out_of_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKCAST_API_KEYS", f" {KEY} ,, {OTHER_KEY} ")
    monkeypatch.setenv("TASKCAST_SECRET", SECRET)
    monkeypatch.setenv("TASKCAST_TOKEN_TTL", "60")
    monkeypatch.setenv("TASKCAST_ALLOWED_ORIGINS", "https://A.example.com/, http://localhost:3000")
    read = Settings()
    assert read.api_keys == (KEY, OTHER_KEY)
    assert (read.secret, read.token_ttl) == (SECRET, 60)
    assert read.allowed_origins == ("https://a.example.com", "http://localhost:3000")
    for shown in (repr(read), repr(Auth(read, 60))):
        assert KEY not in shown and SECRET not in shown
    # Off by default; a token lives as long as the served app keeps records (create_app).
    for name in ("API_KEYS", "SECRET", "TOKEN_TTL", "ALLOWED_ORIGINS"):
        monkeypatch.delenv(f"TASKCAST_{name}")
    default = Settings()
    assert (default.api_keys, default.secret, default.allowed_origins) == ((), "", ())
    assert default.token_ttl is None
    monkeypatch.setenv("TASKCAST_SECRET", "too-short-secret")
    with pytest.raises(ValueError, match="at least 32 characters") as short:
        Settings()
    assert "too-short-secret" not in str(short.value)
    monkeypatch.delenv("TASKCAST_SECRET")
    monkeypatch.setenv("TASKCAST_API_KEYS", f"{KEY},short")
    with pytest.raises(ValueError, match="at least 16 characters") as keys:
        Settings()
    assert KEY not in str(keys.value)
    monkeypatch.delenv("TASKCAST_API_KEYS")
    monkeypatch.setenv("TASKCAST_ALLOWED_ORIGINS", "app.example.com")
    with pytest.raises(ValueError, match="is not '\\*' or an origin"):
        Settings()


# -- API keys --------------------------------------------------------------------------


async def test_dispatch_needs_an_api_key(http: httpx.AsyncClient) -> None:
    missing = assert_unauthorized(await http.post("/tasks/sleep", json={"seconds": 0}))
    for headers in (keyed("wrong-key-0123456789"), {"Authorization": f"Basic {KEY}"}):
        wrong = await http.post("/tasks/sleep", json={"seconds": 0}, headers=headers)
        assert assert_unauthorized(wrong) == missing
    # Before anything else: an unknown task name is not even looked up.
    assert_unauthorized(await http.post("/tasks/nope"))
    # The tutorial's paths that start work are keyed alike.
    assert_unauthorized(await http.get("/async-process/?seconds=0"))
    assert_unauthorized(await http.get("/sync-process/?seconds=0"))
    assert_unauthorized(await http.post("/process-data-with-status/?time=1"))
    assert_unauthorized(await http.post("/process-and-email/?email=ada@example.com", json={}))

    for key in (KEY, OTHER_KEY):
        response = await http.post("/tasks/sleep", json={"seconds": 0}, headers=keyed(key))
        assert response.status_code == 202
        links = response.json()
        task_id, token = links["task_id"], links["token"]
        assert verify(SECRET_BYTES, token, task_id, now=time.time())
        assert links["status_url"] == f"{http.base_url}/tasks/{task_id}?token={token}"
        assert links["ws_url"].endswith(f"/ws/tasks/{task_id}?token={token}")
        assert response.headers["location"] == links["status_url"]
        # The links work as they are: nothing else to present.
        assert (await http.get(links["status_url"])).status_code == 200

    tutorial = await http.get("/async-process/?seconds=0", headers=keyed())
    assert tutorial.status_code == 200
    body = tutorial.json()
    assert set(body) == {"task_id", "status", "token"}
    shaped = await http.get(f"/task-status/{body['task_id']}", params={"token": body["token"]})
    assert shaped.status_code == 200
    assert_unauthorized(await http.get(f"/task-status/{body['task_id']}"))


async def test_cancel_needs_an_api_key(http: httpx.AsyncClient) -> None:
    links = await dispatch(http, "sleep", seconds=30)
    task_id, token = links["task_id"], links["token"]
    assert_unauthorized(await http.delete(f"/tasks/{task_id}"))
    # A watch token lets its holder read the task, not cancel it, when keys are set.
    assert_unauthorized(await http.delete(f"/tasks/{task_id}", params={"token": token}))
    assert_unauthorized(await http.delete(f"/tasks/{task_id}", headers=keyed("x" * 20)))
    running = await http.get(f"/tasks/{task_id}", params={"token": token})
    assert running.json()["state"] != "REVOKED"
    assert (await http.delete(f"/tasks/{task_id}", headers=keyed())).status_code == 202
    assert (await until_final(http, task_id))["state"] == "REVOKED"


async def test_cancel_without_keys_needs_the_tasks_token(worker: WorkerProcess) -> None:
    """With a secret and no keys, anyone may dispatch, and a token's holder may cancel."""
    async with (
        running_server(create_app(settings=settings(secret=SECRET))) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        links = (await http.post("/tasks/sleep", json={"seconds": 30})).json()
        task_id = links["task_id"]
        assert_unauthorized(await http.delete(f"/tasks/{task_id}"))
        bearer = {"Authorization": f"Bearer {links['token']}"}
        assert (await http.delete(f"/tasks/{task_id}", headers=bearer)).status_code == 202
        done = await eventually(
            lambda: http.get(links["status_url"]), lambda r: r.json()["final"] is True
        )
        assert done.json()["state"] == "REVOKED"


# -- watch tokens over REST ------------------------------------------------------------


async def test_status_needs_the_tasks_token_and_tells_nothing_without_it(
    http: httpx.AsyncClient,
) -> None:
    links = await dispatch(http, "sleep", seconds=0)
    known, token = links["task_id"], links["token"]
    unknown = str(uuid.uuid4())
    stranger = (await dispatch(http, "sleep", seconds=0))["token"]

    def attempts(task_id: str) -> list[dict[str, Any]]:
        expired = sign(SECRET_BYTES, task_id, int(time.time()) - 1)
        forged = sign(b"not the service's secret, but as long", task_id, 2_000_000_000)
        return [
            {},
            {"params": {"token": "v1.2000000000.garbage"}},
            {"params": {"token": expired}},
            {"params": {"token": forged}},
            {"params": {"token": stranger}},  # another task's token
            {"headers": {"Authorization": f"Bearer {stranger}"}},
            {"params": {"token": KEY}},  # a key counts only in the header
        ]

    answers = []
    for task_id in (known, unknown):
        for attempt in attempts(task_id):
            answers.append(assert_unauthorized(await http.get(f"/tasks/{task_id}", **attempt)))
    # Word for word the same, for a task that exists and for one that does not.
    assert all(answer == answers[0] for answer in answers)

    by_query = await http.get(f"/tasks/{known}", params={"token": token})
    by_header = await http.get(f"/tasks/{known}", headers={"Authorization": f"Bearer {token}"})
    by_key = await http.get(f"/tasks/{known}", headers=keyed(OTHER_KEY))
    assert by_query.status_code == by_header.status_code == by_key.status_code == 200
    assert by_query.json()["task_id"] == known
    # A key reads any task, so it may learn which ids exist.
    assert (await http.get(f"/tasks/{unknown}", headers=keyed())).status_code == 404


async def test_openapi_describes_the_credentials(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "watchToken"}
    submit = spec["paths"]["/tasks/sleep"]["post"]
    assert submit["security"] == [{"bearer": []}]
    status = spec["paths"]["/tasks/{task_id}"]["get"]
    assert status["security"] == [{"watchToken": []}, {"bearer": []}]
    for operation in (submit, status, spec["paths"]["/tasks/{task_id}"]["delete"]):
        assert "401" in operation["responses"]


# -- watch tokens over WebSocket -------------------------------------------------------


async def test_task_socket_needs_the_tasks_token(http: httpx.AsyncClient, secured: str) -> None:
    links = await dispatch(http, "progress", total=3, step_seconds=0.05)
    task_id = links["task_id"]
    for query in ("", "?token=v1.1.x", f"?token={sign(SECRET_BYTES, task_id, 1)}"):
        async with ws_connect(secured, f"/ws/tasks/{task_id}{query}") as ws:
            messages, code = await read_until_closed(ws)
        assert code == 4401
        assert [m["code"] for m in messages] == ["unauthorized"]
    async with ws_connect(secured, links["ws_url"].split(secured.split("//")[1])[1]) as ws:
        messages, code = await read_until_closed(ws)
    assert code == 1000
    assert messages[-1]["state"] == "SUCCESS"
    # An API key in the handshake's header also opens it.
    async with ws_connect(secured, f"/ws/tasks/{task_id}", additional_headers=keyed()) as ws:
        messages, code = await read_until_closed(ws)
    assert (code, [m["state"] for m in messages]) == (1000, ["SUCCESS"])


async def test_subscribe_needs_the_tasks_token_and_the_socket_stays_open(
    http: httpx.AsyncClient, secured: str
) -> None:
    links = await dispatch(http, "sleep", seconds=0)
    known, token = links["task_id"], links["token"]
    unknown = str(uuid.uuid4())
    async with ws_connect(secured, "/ws") as ws:
        refusals = []
        for task_id, frame_token in ((known, None), (known, "v1.9.x"), (unknown, None)):
            frame = {"op": "subscribe", "task_id": task_id}
            if frame_token is not None:
                frame["token"] = frame_token
            await ws.send(json.dumps(frame))
            refusal = await recv_json(ws)
            assert refusal.pop("task_id") == task_id
            refusals.append(refusal)
        assert refusals == [refusals[0]] * 3
        assert refusals[0]["code"] == "unauthorized"
        await ws.send(json.dumps({"op": "ping"}))
        assert await recv_json(ws) == {"type": "pong"}
        await ws.send(json.dumps({"op": "subscribe", "task_id": known, "token": token}))
        assert (await recv_json_until_final(ws))["task_id"] == known
    # A socket opened with an API key may follow any task without tokens.
    async with ws_connect(secured, "/ws", additional_headers=keyed()) as ws:
        await ws.send(json.dumps({"op": "subscribe", "task_id": known}))
        assert (await recv_json_until_final(ws))["state"] == "SUCCESS"


async def test_a_group_is_opened_by_its_own_token_only(
    http: httpx.AsyncClient, secured: str
) -> None:
    body = {"count": 2, "params": {"seconds": 0}}
    assert (await http.post("/groups/sleep", json=body)).status_code == 401
    response = await http.post("/groups/sleep", json=body, headers=keyed())
    assert response.status_code == 202, response.text
    reply = response.json()
    group_id, token = reply["group_id"], reply["token"]
    assert reply["status_url"].endswith(f"?token={token}")
    assert reply["ws_url"].endswith(f"?token={token}")
    # A member's token is not the group's (nor the other way round).
    member_token = Auth(settings(secret=SECRET), 86_400).token(reply["task_ids"][0])
    for bad in (None, member_token):
        params = {} if bad is None else {"token": bad}
        refused = await http.get(f"/groups/{group_id}", params=params)
        assert refused.status_code == 401
        assert "the group's watch token" in refused.json()["detail"]
    assert (
        await http.get(f"/tasks/{reply['task_ids'][0]}", params={"token": token})
    ).status_code == 401
    assert (await http.get(f"/groups/{group_id}", params={"token": token})).status_code == 200
    async with ws_connect(secured, f"/ws/groups/{group_id}") as ws:
        messages, code = await read_until_closed(ws)
    assert (code, [m["code"] for m in messages]) == (4401, ["unauthorized"])
    async with ws_connect(secured, f"/ws/groups/{group_id}?token={token}") as ws:
        messages, code = await read_until_closed(ws, within=30)
    assert (code, messages[-1]["state"]) == (1000, "SUCCESS")
    async with ws_connect(secured, "/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "group_id": group_id}))
        refusal = await recv_json(ws)
        assert (refusal["code"], refusal["group_id"]) == ("unauthorized", group_id)
        await ws.send(json.dumps({"op": "subscribe", "group_id": group_id, "token": token}))
        assert (await recv_json(ws))["states"] == {"SUCCESS": 2}


async def recv_json_until_final(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message = await recv_json(ws)
        assert message["type"] == "status", message
        if message["final"]:
            return message


# -- origins and CORS ------------------------------------------------------------------


async def test_websocket_handshakes_are_checked_against_the_allowed_origins(
    secured: str,
) -> None:
    port = secured.rsplit(":", 1)[1]
    for origin in (ORIGIN, None, f"http://127.0.0.1:{port}"):
        # Allowed, absent (not a browser), or the service's own pages.
        async with ws_connect(secured, "/ws", origin=origin) as ws:
            await ws.send(json.dumps({"op": "ping"}))
            assert await recv_json(ws) == {"type": "pong"}
    for origin in ("https://evil.example", "null", f"{ORIGIN}.evil.example"):
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(secured, "/ws", origin=origin):
                pass
        response = refused.value.response
        assert response.status_code == 403
        assert json.loads(response.body)["error"] == "forbidden_origin"


async def test_cors_answers_the_allowed_origin_only(http: httpx.AsyncClient) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    allowed = await http.options("/tasks/sleep", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "DELETE" in allowed.headers["access-control-allow-methods"]
    refused = await http.options(
        "/tasks/sleep", headers={"Origin": "https://evil.example", **preflight}
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    simple = await http.get("/healthz", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN


# -- clients ---------------------------------------------------------------------------


async def test_the_python_client_presents_keys_and_tokens(secured: str) -> None:
    with pytest.raises(taskcast.Unauthorized, match="API key is required"):
        await taskcast.submit(secured, "sleep", {"seconds": 0})
    links = await taskcast.submit(
        secured, "progress", {"total": 3, "step_seconds": 0.05}, api_key=KEY
    )
    task_id, token = links["task_id"], links["token"]
    async with asyncio.timeout(20):
        statuses = [status async for status in taskcast.watch(secured, task_id, token=token)]
    assert statuses[-1]["state"] == "SUCCESS"
    assert await taskcast.get_status(secured, task_id, token=token) == statuses[-1]
    assert await taskcast.get_status(secured, task_id, api_key=KEY) == statuses[-1]
    with pytest.raises(taskcast.Unauthorized):
        await taskcast.get_status(secured, task_id)
    # Refused at once, not retried until the watch gives up.
    with pytest.raises(taskcast.Unauthorized):
        async with asyncio.timeout(5):
            async for _ in taskcast.watch(secured, task_id, token="v1.1.x"):
                pass


async def test_the_command_line_presents_keys_and_tokens(secured: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in {"TASKCAST_API_KEY", "TASKCAST_TOKEN"}}
    code, out, err = await run_cli(
        "submit", "progress", "--total", "3", "--step-seconds", "0.05", "--watch",
        "--url", secured, env={**clean, "TASKCAST_API_KEY": KEY},
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[-1].startswith("SUCCESS")
    task_id = out.split()[0]
    token = out.split("?token=")[1].split()[0]
    code, _, err = await run_cli("watch", task_id, "--url", secured, env=clean)
    assert code == 7
    assert err.startswith("taskcast: ") and token not in err
    code, out, err = await run_cli("watch", task_id, "--url", secured, "--token", token, env=clean)
    assert (code, out.split()[0]) == (0, "SUCCESS"), err


# -- logs ------------------------------------------------------------------------------


@contextlib.contextmanager
def service_logs() -> Iterator[list[str]]:
    """Every line the server's loggers write meanwhile (uvicorn's at INFO, taskcast's
    at DEBUG), as formatted for output."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    levels = {"uvicorn.error": logging.INFO, "uvicorn.access": logging.INFO, "service": 1}
    saved = {name: logging.getLogger(name).level for name in levels}
    # uvicorn.error's records reach its parent "uvicorn"; access records stay where made.
    holders = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.access", "service")]
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for logger in holders:
        logger.addHandler(handler)
    try:
        yield lines
    finally:
        for logger in holders:
            logger.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


async def test_no_key_secret_or_token_reaches_the_logs(
    http: httpx.AsyncClient, secured: str
) -> None:
    with service_logs() as lines:
        links = await dispatch(http, "sleep", seconds=0)
        token = links["token"]
        await http.post("/tasks/sleep", headers=keyed(OTHER_KEY + "x"))
        await http.get(links["status_url"])
        await http.get(f"/tasks/{links['task_id']}", params={"token": token + "x"})
        path = "/ws/tasks/" + links["ws_url"].split("/ws/tasks/")[1]
        async with ws_connect(secured, path) as ws:
            await read_until_closed(ws)
        async with ws_connect(secured, "/ws") as ws:
            frame = {"op": "subscribe", "task_id": links["task_id"], "token": token}
            await ws.send(json.dumps(frame))
            await recv_json_until_final(ws)
    # The requests were logged, with their tokens blanked.
    assert any("GET /tasks/" in line and "token=[redacted]" in line for line in lines), lines
    assert any("WebSocket /ws/tasks/" in line and "token=[redacted]" in line for line in lines)
    for secret in (KEY, OTHER_KEY, SECRET, token):
        assert not [line for line in lines if secret in line]
