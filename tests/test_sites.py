"""Pages of other sites and host names the service does not answer to (docs/security.md):
a page of another site cannot start or cancel work through a visitor's browser, auth on
or off; a DNS-rebinding page does not pass for one of the service's own."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator

import httpx
import pytest
import redis

from taskcast.app import create_app
from tests import env
from tests.support import (
    WorkerProcess,
    running_server,
    settings_with,
    submit,
    task_keys,
)

EVIL = "https://evil.example"
GOOD = "http://good.example"


@pytest.fixture(scope="module")
async def open_service(worker: WorkerProcess) -> AsyncIterator[str]:
    """Auth off and nothing listed: the defaults, as in ``taskcast dev``."""
    async with running_server(create_app(settings=settings_with())) as url:
        yield url


def foreign(headers: dict[str, str]) -> None:
    """A browser's request from a page of another site, as the browser sends it."""
    headers.setdefault("Sec-Fetch-Site", "cross-site")


@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    [
        # A form or a no-cors fetch: a "simple" request, which no CORS preflight guards.
        ("POST", "/tasks/email", {"Origin": EVIL, "Content-Type": "text/plain"},
         b'{"to": "victim@example.com", "data": {}}'),
        ("POST", "/groups/sleep", {"Origin": EVIL, "Content-Type": "text/plain"},
         b'{"count": 3}'),
        ("POST", "/process-data-with-status/?time=5", {"Origin": EVIL}, b""),
        # An <img src>: no Origin, and the browser says where it came from.
        ("GET", "/async-process/?seconds=0", {"Sec-Fetch-Dest": "image"}, b""),
        ("GET", "/sync-process/?seconds=0", {"Sec-Fetch-Dest": "image"}, b""),
        # A browser too old to send Sec-Fetch-Site still sends Origin on a POST.
        ("POST", "/tasks/sleep", {"Origin": EVIL, "Sec-Fetch-Site": ""}, b""),
        # A sandboxed frame or a file: page.
        ("POST", "/tasks/sleep", {"Origin": "null"}, b""),
        # Another subdomain of the same site is another origin.
        ("POST", "/tasks/sleep", {"Origin": "http://other.127.0.0.1.nip.io",
                                  "Sec-Fetch-Site": "same-site"}, b""),
        # A browser that sends neither Origin nor Sec-Fetch-Site (an old one, or one
        # whose privacy settings strip them) still names the page: its Referer.
        ("GET", "/async-process/?seconds=0", {"Referer": f"{EVIL}/page.html",
                                              "Sec-Fetch-Site": ""}, b""),
        ("POST", "/tasks/sleep", {"Referer": f"{EVIL}/", "Sec-Fetch-Site": ""}, b""),
        ("DELETE", "/groups/00000000-0000-4000-8000-000000000000",
         {"Referer": "null", "Sec-Fetch-Site": ""}, b""),
    ],
)  # fmt: skip
async def test_a_page_of_another_site_cannot_start_work_with_auth_off(
    open_service: str,
    redis_client: redis.Redis,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    foreign(headers)
    if headers.get("Sec-Fetch-Site") == "":
        del headers["Sec-Fetch-Site"]
    before = task_keys(redis_client, env.KEY_PREFIX)
    async with httpx.AsyncClient(base_url=open_service) as http:
        response = await http.request(method, path, headers=headers, content=body)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "forbidden_origin"
    assert "TASKCAST_ALLOWED_ORIGINS" in response.json()["detail"]
    assert task_keys(redis_client, env.KEY_PREFIX) == before


async def test_nor_cancel_it(open_service: str) -> None:
    async with httpx.AsyncClient(base_url=open_service) as http:
        task_id = await submit(http, "sleep", seconds=30)
        refused = await http.delete(f"/tasks/{task_id}", headers={"Origin": EVIL})
        assert refused.status_code == 403
        assert (await http.get(f"/tasks/{task_id}")).json()["state"] != "REVOKED"
        assert (await http.delete(f"/tasks/{task_id}")).status_code == 202


async def test_the_service_s_own_pages_and_scripts_still_can(open_service: str) -> None:
    port = open_service.rsplit(":", 1)[1]
    own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    # A browser that sends only a Referer, from the service's own page.
    own_referer = {"Referer": f"http://127.0.0.1:{port}/?tab=1"}
    async with httpx.AsyncClient(base_url=open_service) as http:
        for headers in (own, own_referer, {}, {"Sec-Fetch-Site": "none"}):
            response = await http.post("/tasks/sleep", json={"seconds": 0}, headers=headers)
            assert response.status_code == 202, (headers, response.text)
        # A Referer that only begins like the service's own address is another host's.
        posing = {"Referer": f"http://127.0.0.1:{port}@evil.example/"}
        refused = await http.post("/tasks/sleep", json={"seconds": 0}, headers=posing)
        assert refused.status_code == 403, refused.text
        assert "evil.example (its Referer)" in refused.json()["detail"]
        # Reading is not guarded: it changes nothing.
        read = await http.get(f"/tasks/{response.json()['task_id']}", headers={"Origin": EVIL})
        assert read.status_code == 200


async def test_a_listed_origin_may_start_work(worker: WorkerProcess) -> None:
    app = create_app(settings=settings_with(allowed_origins=(GOOD,)))
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        listed = {"Origin": GOOD, "Sec-Fetch-Site": "cross-site"}
        assert (await http.post("/tasks/sleep", headers=listed)).status_code == 202
        assert (await http.post("/tasks/sleep", headers={"Origin": EVIL})).status_code == 403
        # The same by Referer, where a browser sends no Origin (an <img> on that page).
        for referer, status in ((f"{GOOD}/reports/7", 200), (f"{EVIL}/", 403)):
            image = await http.get("/async-process/?seconds=0", headers={"Referer": referer})
            assert image.status_code == status, (referer, image.text)


async def handshake(url: str, host: str | None = None, origin: str | None = None) -> int:
    """The HTTP status a WebSocket handshake to ``url`` gets, sent by hand so that its
    Host header can be any (as a DNS-rebinding page's is)."""
    address = url.removeprefix("http://")
    reader, writer = await asyncio.open_connection(*address.rsplit(":", 1))
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {host or address}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


async def test_a_dns_rebinding_page_is_not_the_service_s_own(worker: WorkerProcess) -> None:
    """A rebinding page's own name resolves to the service: its Host and Origin match,
    as on the service's own page. With origins listed, that no longer passes."""
    rebound = {"host": "evil.example:8190", "origin": "http://evil.example:8190"}
    app = create_app(settings=settings_with(allowed_origins=(GOOD,)))
    async with running_server(app) as url:
        assert await handshake(url, **rebound) == 403
        assert await handshake(url, origin=GOOD) == 101
        async with httpx.AsyncClient(base_url=url) as http:
            headers = {"Host": rebound["host"], "Origin": rebound["origin"]}
            started = await http.post("/tasks/sleep", headers=headers)
            assert started.status_code == 403
    # Where host names are listed, a request to any other is refused outright, and the
    # service's own pages count as allowed again.
    hosts = settings_with(allowed_origins=(GOOD,), allowed_hosts=("127.0.0.1", "localhost"))
    async with running_server(create_app(settings=hosts)) as url:
        port = url.rsplit(":", 1)[1]
        assert await handshake(url, **rebound) == 400
        assert await handshake(url, origin=f"http://127.0.0.1:{port}") == 101
        async with httpx.AsyncClient(base_url=url) as http:
            refused = await http.get("/healthz", headers={"Host": "evil.example"})
            assert refused.status_code == 400
            assert refused.json()["error"] == "invalid_host"
            assert (await http.get("/healthz")).status_code == 200
            localhost = await http.get("/healthz", headers={"Host": f"localhost:{port}"})
            assert localhost.status_code == 200
