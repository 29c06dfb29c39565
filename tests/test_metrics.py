"""GET /metrics: what a real task, real subscribers and a dead Redis leave in the scrape."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from taskcast.live.protocol import Kind, Update
from taskcast.live.subscriber import Subscriber
from tests.support import (
    WorkerProcess,
    eventually,
    read_until_closed,
    recv_json,
    running_server,
    service_process,
    ws_connect,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    """Every sample of a scrape, by name and labels."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_a_followed_task_in_the_metrics(worker: WorkerProcess) -> None:
    # An app of its own: a registry of its own, which no other test has counted into.
    app = create_app()
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        before = await scrape(http)
        assert value(before, "taskcast_dispatches_total", task="progress", outcome="ok") == 0
        refused = await http.post("/tasks/progress", json={"total": 0})
        assert refused.status_code == 422
        reply = await http.post("/tasks/progress", json={"total": 3, "step_seconds": 0.05})
        task_id = reply.json()["task_id"]
        async with ws_connect(url, "/ws") as multi:
            await multi.send(json.dumps({"op": "subscribe", "task_id": task_id}))
            async with ws_connect(url, f"/ws/tasks/{task_id}") as single:
                first = await recv_json(single)
                during = await scrape(http)
                messages, code = await read_until_closed(single)
            assert code == 1000
            while not (await recv_json(multi))["final"]:
                pass
            await multi.send('{"op": "ping"}')
            assert await recv_json(multi) == {"type": "pong"}
        # Nothing left open or watched once both clients are gone.
        after = await eventually(
            lambda: scrape(http),
            lambda s: (
                value(s, "taskcast_ws_connections") == 0 and value(s, "taskcast_watched_tasks") == 0
            ),
        )
        text = (await http.get("/metrics")).text

    assert value(during, "taskcast_ws_connections") == 2
    assert value(during, "taskcast_ws_subscriptions") == 2
    assert value(during, "taskcast_watched_tasks") == 1
    assert value(after, "taskcast_ws_subscriptions") == 0
    # The single socket's frames alone, and the multiplexed one's pong: closed
    # connections still count.
    assert value(after, "taskcast_frames_sent_total") >= len([first, *messages]) + 1
    assert value(after, "taskcast_frames_coalesced_total") == 0
    assert value(after, "taskcast_dispatches_total", task="progress", outcome="ok") == 1
    assert value(after, "taskcast_dispatches_total", task="progress", outcome="invalid") == 1
    assert value(after, "taskcast_dispatches_total", task="sleep", outcome="ok") == 0
    assert value(after, "taskcast_hub_read_seconds_count") >= 1
    assert value(after, "taskcast_hub_read_seconds_sum") > 0
    # Push is on: the worker's writes were announced (at least STARTED, progress, SUCCESS).
    assert value(after, "taskcast_pubsub_messages_total") >= 3
    assert value(after, "taskcast_redis_errors_total", source="hub") == 0
    assert value(after, "taskcast_hub_healthy") == 1
    # Bounded labels: no task id, no client address.
    assert task_id not in text and "127.0.0.1" not in text


async def test_redis_errors_are_counted_while_redis_is_down() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "TASKCAST_REDIS_URL": dead, "TASKCAST_KEY_PREFIX": ""}
    async with service_process(env) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.post("/tasks/sleep", json={"seconds": 0})).status_code == 503
        # Reading or cancelling a task is a clear, retryable 503 too, never a 500.
        for method in ("GET", "DELETE"):
            response = await http.request(method, f"/tasks/{uuid.uuid4()}")
            assert response.status_code == 503, response.text
            assert response.json() == {
                "error": "unavailable",
                "detail": "the result store (Redis) is unavailable; retry",
            }
        async with ws_connect(base, "/ws") as ws:
            # The hub fails to read it, again and again, and the socket stays open.
            await ws.send(json.dumps({"op": "subscribe", "task_id": str(uuid.uuid4())}))
            samples = await eventually(
                lambda: scrape(http),
                lambda s: value(s, "taskcast_redis_errors_total", source="hub") >= 2,
            )
            await ws.send('{"op": "ping"}')
            assert await recv_json(ws) == {"type": "pong"}
    assert value(samples, "taskcast_redis_errors_total", source="readyz") == 1
    assert value(samples, "taskcast_redis_errors_total", source="dispatch") == 1
    assert value(samples, "taskcast_redis_errors_total", source="request") == 2
    assert value(samples, "taskcast_dispatches_total", task="sleep", outcome="publish_failed") == 1
    assert value(samples, "taskcast_hub_healthy") == 0


async def test_a_replaced_pending_frame_counts_as_coalesced() -> None:
    """The mailbox's own count, with a send that waits as a full socket buffer does."""
    readable = asyncio.Event()
    delivered: list[str] = []

    class Waiting(Subscriber):
        async def write(self, update: Update) -> None:
            await readable.wait()
            delivered.append(update.text)

    subscriber = Waiting(set())
    sender = asyncio.create_task(subscriber.run())
    try:
        for frame in ("1", "2", "3"):  # 1 stalls; 2 waits in the mailbox; 3 replaces it
            subscriber.offer(Update("task", Kind.STATUS, "status", frame))
        readable.set()
        await eventually(lambda: delivered, lambda d: d == ["1", "3"])
        assert (subscriber.frames_sent, subscriber.frames_coalesced) == (2, 1)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
