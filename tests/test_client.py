"""The Python client against a real uvicorn, a real worker and Redis; restarts included."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis

from taskcast import client as taskcast
from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from taskcast.live.hub import Hub
from taskcast_celery import keys
from tests import env
from tests.support import (
    assert_progress_in_order,
    eventually,
    final,
    run_cli,
    running_server,
    submit,
    wait_for_state,
)


async def collect(statuses: AsyncIterator[dict[str, Any]], within: float = 20) -> list[Any]:
    async with asyncio.timeout(within):
        return [status async for status in statuses]


async def test_get_status_answers_what_rest_answers(
    client: httpx.AsyncClient, base_url: str
) -> None:
    task_id = await submit(client, "sleep", seconds=0)
    done = await wait_for_state(client, task_id, final)
    assert await taskcast.get_status(base_url, task_id) == done
    assert await taskcast.get_status(base_url + "/", task_id.upper()) == done


async def test_get_status_errors(base_url: str) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(taskcast.TaskNotFound, match=f"no task with id {missing}"):
        await taskcast.get_status(base_url, missing)
    with pytest.raises(taskcast.InvalidTaskId, match="not-a-uuid"):
        await taskcast.get_status(base_url, "not-a-uuid")
    # Quoted into one path segment: never resolved to another route such as /healthz.
    with pytest.raises(
        taskcast.TaskcastError, match=re.escape("no route for GET /tasks/../healthz")
    ):
        await taskcast.get_status(base_url, "../healthz")
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(taskcast.ServiceUnavailable, match="Connection refused"):
        await taskcast.get_status(nobody, missing)
    with pytest.raises(taskcast.TaskcastError, match="http:// or https://"):
        await taskcast.get_status("127.0.0.1:8000", missing)


async def test_submit_and_its_errors(client: httpx.AsyncClient, base_url: str) -> None:
    links = await taskcast.submit(base_url, "sleep", {"seconds": 0})
    assert links["status_url"] == f"{base_url}/tasks/{links['task_id']}"
    await wait_for_state(client, links["task_id"], final)
    with pytest.raises(taskcast.UnknownTaskName, match="no task named 'nope'"):
        await taskcast.submit(base_url, "nope", {})
    with pytest.raises(taskcast.InvalidParams, match="total: Input should be greater"):
        await taskcast.submit(base_url, "progress", {"total": 0})


async def test_watch_yields_the_snapshot_then_progress_in_order_then_one_final(
    client: httpx.AsyncClient, base_url: str
) -> None:
    task_id = await submit(client, "progress", total=8, step_seconds=0.05)
    statuses = await collect(taskcast.watch(base_url, task_id))
    assert statuses[0]["state"] in {"SENT", "STARTED", "PROGRESS"}
    assert_progress_in_order(statuses)
    assert statuses[-1]["state"] == "SUCCESS"
    assert statuses[-1]["result"] == {"status": "completed"}
    # The status object itself, as REST answers it: the message's "type" is gone.
    assert statuses[-1] == await taskcast.get_status(base_url, task_id)
    assert all(a != b for a, b in itertools.pairwise(statuses))


async def test_watch_of_an_ended_task_yields_its_final_only(
    client: httpx.AsyncClient, base_url: str
) -> None:
    task_id = await submit(client, "sleep", seconds=0)
    await wait_for_state(client, task_id, final)
    statuses = await collect(taskcast.watch(base_url, task_id))
    assert [status["state"] for status in statuses] == ["SUCCESS"]


async def test_watch_unknown_and_malformed_ids(base_url: str) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(taskcast.TaskNotFound, match=missing):
        await collect(taskcast.watch(base_url, missing))
    with pytest.raises(taskcast.InvalidTaskId, match="not-a-uuid"):
        await collect(taskcast.watch(base_url, "not-a-uuid"))


@pytest.mark.parametrize("follow", [taskcast.watch, taskcast.watch_group])
async def test_watch_gives_up_after_its_time_without_a_connection(
    follow: Callable[..., AsyncIterator[dict[str, Any]]],
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    statuses = follow(nobody, str(uuid.uuid4()), give_up_after=0.5, retry_initial=0.05)
    with pytest.raises(taskcast.ServiceUnavailable, match=r"Connection refused; gave up after"):
        await collect(statuses)
    assert 0.5 <= time.monotonic() - started < 5


async def test_watch_group_yields_the_group_in_order_then_one_final(base_url: str) -> None:
    ok = {"total": 2, "step_seconds": 0.02}
    reply = await taskcast.submit_group(base_url, "progress", tasks=[ok, ok, {**ok, "fail_at": 1}])
    group_id, task_ids = reply["group_id"], reply["task_ids"]
    assert reply["status_url"] == f"{base_url}/groups/{group_id}"
    assert len(task_ids) == 3
    groups = await collect(taskcast.watch_group(base_url, group_id))
    assert {(group["group_id"], group["size"]) for group in groups} == {(group_id, 3)}
    # Never backwards: members done, and the share of the work done.
    dones = [group["done"] for group in groups]
    percents = [group["progress"]["percent"] for group in groups]
    assert (dones, percents) == (sorted(dones), sorted(percents))
    assert [group["final"] for group in groups].count(True) == 1
    final = groups[-1]
    assert (final["state"], final["done"], final["final"]) == ("FAILURE", 3, True)
    assert final["states"] == {"SUCCESS": 2, "FAILURE": 1}
    assert [(f["task_id"], f["error"]["message"]) for f in final["failures"]] == [
        (task_ids[2], "failed at step 1 of 2")
    ]
    assert all(a != b for a, b in itertools.pairwise(groups))
    # The group status object itself, as REST answers it: the message's "type" is gone.
    assert final == await taskcast.get_group(base_url, group_id)


async def test_group_errors(base_url: str) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(taskcast.GroupNotFound, match=f"no group with id {missing}"):
        await taskcast.get_group(base_url, missing)
    with pytest.raises(taskcast.InvalidGroupId, match="group id must be a UUID, got 'not-a-uuid'"):
        await taskcast.get_group(base_url, "not-a-uuid")
    with pytest.raises(taskcast.GroupNotFound, match=missing):
        await collect(taskcast.watch_group(base_url, missing))
    with pytest.raises(taskcast.InvalidGroupId, match="not-a-uuid"):
        await collect(taskcast.watch_group(base_url, "not-a-uuid"))
    with pytest.raises(taskcast.UnknownTaskName, match="no task named 'nope'"):
        await taskcast.submit_group(base_url, "nope", count=1)
    with pytest.raises(
        taskcast.InvalidParams, match=re.escape("params.total: Input should be greater")
    ):
        await taskcast.submit_group(base_url, "progress", count=2, params={"total": 0})
    # Neither count nor tasks: the service says what it wants.
    with pytest.raises(taskcast.InvalidParams, match=re.escape("count (with params) or tasks")):
        await taskcast.submit_group(base_url, "progress")


class Follower:
    """A watch running in the background, with every status it yielded so far."""

    def __init__(self, base_url: str, task_id: str) -> None:
        self.seen: list[dict[str, Any]] = []
        # Quick retries: the test's restart takes a fraction of a second.
        statuses = taskcast.watch(base_url, task_id, retry_initial=0.05, retry_max=0.2)
        self.task = asyncio.create_task(self._follow(statuses))

    async def _follow(self, statuses: AsyncIterator[dict[str, Any]]) -> None:
        async for status in statuses:
            self.seen.append(status)

    async def until(self, accept: Callable[[list[dict[str, Any]]], bool]) -> None:
        """Wait until the statuses seen satisfy ``accept``; a crashed watch fails the wait."""
        await eventually(lambda: self.seen, lambda seen: self.task.done() or accept(seen))
        if self.task.done():
            self.task.result()

    async def finish(self) -> list[dict[str, Any]]:
        async with asyncio.timeout(20):
            await self.task
        return self.seen


async def test_watch_rides_out_a_server_restart_and_gets_the_final(
    client: httpx.AsyncClient, base_url: str
) -> None:
    port = free_port()
    task_id = await submit(client, "progress", total=60, step_seconds=0.05)
    async with running_server(create_app(), port=port) as url:
        follower = Follower(url, task_id)
        await follower.until(lambda seen: any(s["state"] == "PROGRESS" for s in seen))
    # The first server is gone: its shutdown closed the socket (1012) mid-task.
    before = len(follower.seen)
    assert not any(status["final"] for status in follower.seen)
    async with running_server(create_app(), port=port):
        statuses = await follower.finish()
    assert len(statuses) > before
    assert_progress_in_order(statuses)
    assert statuses[-1]["state"] == "SUCCESS"
    assert all(a != b for a, b in itertools.pairwise(statuses))


async def test_after_a_reconnect_the_repeated_snapshot_is_not_yielded_again(
    client: httpx.AsyncClient, base_url: str
) -> None:
    port = free_port()
    task_id = await submit(client, "sleep", seconds=30)
    try:
        await wait_for_state(client, task_id, lambda s: s["state"] == "STARTED")
        async with running_server(create_app(), port=port) as url:
            follower = Follower(url, task_id)
            await follower.until(bool)
        second = create_app()
        async with running_server(second, port=port):
            hub: Hub = second.state.taskcast.hub
            # The watch is back (the new server follows the task for it): its snapshot,
            # STARTED again unless the revocation below beat it, must not show.
            await eventually(lambda: hub.watched, lambda w: task_id in w)
            assert (await client.delete(f"/tasks/{task_id}")).status_code == 202
            statuses = await follower.finish()
        assert [status["state"] for status in statuses] == ["STARTED", "REVOKED"]
        assert statuses[-1]["error"]["type"] == "TaskRevokedError"
    finally:
        await client.delete(f"/tasks/{task_id}")


async def test_after_a_reconnect_a_snapshot_new_only_in_its_estimates_is_not_yielded(
    redis_client: redis.Redis,
) -> None:
    """The new server (another replica, behind a balancer) measures rate and eta_s afresh:
    its snapshot is the last status yielded with null estimates, which says nothing new."""
    port = free_port()
    task_id = str(uuid.uuid4())
    key = keys.task_meta_key(env.KEY_PREFIX, task_id)

    def record(status: str, current: int) -> None:
        meta = {"status": status, "result": {"current": current, "total": 5}, "task_id": task_id}
        redis_client.set(key, json.dumps(meta))

    record("PROGRESS", 1)
    async with running_server(create_app(), port=port) as url:
        follower = Follower(url, task_id)
        await follower.until(bool)
        record("PROGRESS", 2)
        await follower.until(lambda seen: seen[-1]["progress"]["current"] == 2)
        assert follower.seen[-1]["progress"]["rate"] is not None
    second = create_app()
    async with running_server(second, port=port):
        hub: Hub = second.state.taskcast.hub
        # The new server has sent the watch its snapshot (2 of 5, rate null) ...
        await eventually(lambda: hub.stats().frames_sent, bool)
        record("SUCCESS", 5)
        statuses = await follower.finish()
    # ... which was not yielded again.
    assert [s["state"] for s in statuses] == ["PROGRESS", "PROGRESS", "SUCCESS"], statuses
    assert [s["progress"]["current"] for s in statuses[:2]] == [1, 2]


async def test_a_final_status_of_megabytes_reaches_the_client_and_the_command(
    base_url: str, redis_client: redis.Redis
) -> None:
    """A result of 2 MB: over websockets' default frame limit of 1 MiB, which closed the
    watch with 1009 (retried until it gave up) instead of delivering it."""
    task_id = str(uuid.uuid4())
    result = "x" * 2_000_000
    record = {"status": "SUCCESS", "result": result, "task_id": task_id}
    redis_client.set(keys.task_meta_key(env.KEY_PREFIX, task_id), json.dumps(record))
    statuses = [status async for status in taskcast.watch(base_url, task_id, give_up_after=5)]
    assert [(s["state"], len(s["result"])) for s in statuses] == [("SUCCESS", 2_000_000)]
    code, out, err = await run_cli("watch", task_id, "--url", base_url, "--give-up", "5")
    assert (code, err) == (0, "")
    assert out.startswith("SUCCESS")
