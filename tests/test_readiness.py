"""/readyz and the broker: a broker that is down, hangs, or comes back is told, without
blocking the event loop, and a probe storm opens one broker connection.

The brokers here need no RabbitMQ: a Redis broker of the test's own that it stops and
starts, a closed port, and a server that accepts connections and never answers. A real
RabbitMQ's part is in tests/test_rabbitmq.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis

from taskcast.app import create_app
from taskcast.cli.devstack import EmbeddedRedis, Supervisor, free_port
from tests.support import demo_app, eventually, running_server, settings_with


@pytest.fixture
def broker_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, as the broker only (the records stay in the
    session's): the test may stop it and start it again on the same port."""
    supervisor = Supervisor(os.environ)
    server = EmbeddedRedis(supervisor)
    server.start()
    try:
        yield server
    finally:
        supervisor.stop_all()
        server.cleanup()


@pytest.fixture
async def silent_broker() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A port that accepts connections and never answers (a broker that hangs); yields it
    and the connections it holds."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, held
        for writer in held:
            writer.close()


async def readiness(http: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await http.get("/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def test_readiness_follows_a_redis_broker_that_stops_and_starts(
    broker_redis: EmbeddedRedis,
) -> None:
    app = demo_app(broker_url=broker_redis.url)
    async with (
        running_server(create_app(celery_app=app, settings=settings_with())) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        assert await readiness(http) == (200, {"status": "ready", "redis": "ok", "broker": "ok"})
        await asyncio.to_thread(broker_redis.supervisor.stop_all)
        _, body = await eventually(lambda: readiness(http), lambda answer: answer[0] == 503)
        assert body == {
            "status": "degraded",
            "redis": "ok",
            "broker": "unreachable",
            "detail": f"the broker ({broker_redis.url}) is unreachable: ConnectionError",
        }
        # Liveness never looks at the broker: nothing to restart for it.
        assert (await http.get("/healthz")).status_code == 200
        await asyncio.to_thread(broker_redis.start)
        await eventually(lambda: readiness(http), lambda answer: answer[0] == 200)


async def test_a_probe_storm_opens_one_broker_connection_a_second(
    broker_redis: EmbeddedRedis,
) -> None:
    """Fifty probes at once: one check (a verdict is kept a second, and probes that come
    while a check runs wait for it), so one broker connection for each second they took
    at most. A long timeout: a machine too busy to answer in 1 s is not the point here."""
    app = demo_app(broker_url=broker_redis.url)
    counter = redis.Redis.from_url(broker_redis.url)
    settings = settings_with(ready_timeout=10.0)
    async with (
        running_server(create_app(celery_app=app, settings=settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        before = counter.info("stats")["total_connections_received"]
        started = time.monotonic()
        answers = await asyncio.gather(*(readiness(http) for _ in range(50)))
        took = time.monotonic() - started
        after = counter.info("stats")["total_connections_received"]
    counter.close()
    assert {code for code, _ in answers} == {200}
    assert 1 <= after - before <= 1 + int(took), (after - before, took)


async def test_an_unreachable_amqp_broker_is_named_without_its_password() -> None:
    broker = f"amqp://taskcast:s3cret@127.0.0.1:{free_port()}//"
    app = demo_app(broker_url=broker)
    async with (
        running_server(create_app(celery_app=app, settings=settings_with())) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        response = await http.get("/readyz")
        assert (await http.get("/healthz")).status_code == 200
    assert response.status_code == 503
    assert response.json() == {
        "status": "degraded",
        "redis": "ok",
        "broker": "unreachable",
        "detail": (
            f"the broker ({broker.replace(':s3cret@', ':**@')}) is unreachable: "
            "ConnectionRefusedError"
        ),
    }
    assert "s3cret" not in response.text


@pytest.mark.parametrize("scheme", ["amqp", "redis"])
async def test_a_broker_that_never_answers_times_out_and_blocks_nothing(
    scheme: str, silent_broker: tuple[int, list[asyncio.StreamWriter]]
) -> None:
    """The check waits in a thread: /healthz answers meanwhile, /readyz says "timed out"
    after TASKCAST_READY_TIMEOUT, and the thread, bounded by the same timeout, ends."""
    port, held = silent_broker
    app = demo_app(broker_url=f"{scheme}://127.0.0.1:{port}/")
    settings = settings_with(ready_timeout=1.0)
    async with (
        running_server(create_app(celery_app=app, settings=settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        started = time.monotonic()
        probe = asyncio.create_task(readiness(http))
        await eventually(lambda: len(held), bool)  # the check is waiting on the broker
        assert (await http.get("/healthz")).status_code == 200
        assert not probe.done(), "the event loop waited for the broker"
        code, body = await probe
        waited = time.monotonic() - started
        assert (code, body["broker"], body["redis"]) == (503, "timed out", "ok")
        assert body["detail"] == (
            f"the broker ({scheme}://127.0.0.1:{port}/) did not answer within 1 s"
        )
        assert 1.0 <= waited < 5, waited
        # The thread gives up too (its sockets' own timeout), and says so: the next
        # check is a new one, not stuck behind it.
        code, body = await eventually(
            lambda: readiness(http), lambda answer: answer[1]["broker"] == "unreachable"
        )
        assert code == 503
