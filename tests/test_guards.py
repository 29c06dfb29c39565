"""Guards declared once per route: enforced by the route, documented from the same
declaration, worded once; and one answer for a vanished record on every transport."""

from __future__ import annotations

import json
import uuid

import httpx
import redis
from starlette.routing import Route

from taskcast.api.guards import WORK_REFUSED, Guard, GuardedRoute, watch_refused
from taskcast.app import create_app
from taskcast.live.hub import Hub
from taskcast_celery import keys
from tests import env
from tests.support import (
    beat,
    eventually,
    recv_json,
    running_record,
    running_server,
    settings_with,
    ws_connect,
)

KEY = "key-" + "k" * 30
SECRET = "s" * 40


async def test_every_route_declares_its_guard_enforces_it_and_documents_it() -> None:
    settings = settings_with(dev=True, api_keys=(KEY,), secret=SECRET)
    app = create_app(settings=settings)
    guarded = [route for route in app.routes if isinstance(route, GuardedRoute)]
    # Every HTTP route but the metrics' (a module below the endpoints) declares its guard.
    plain = [
        route.path
        for route in app.routes
        if isinstance(route, Route) and not isinstance(route, GuardedRoute)
    ]
    assert plain == ["/metrics"]
    some_id = str(uuid.uuid4())
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        spec = (await http.get("/openapi.json")).json()
        for route in guarded:
            if not route.include_in_schema:
                continue
            for method in sorted((route.methods or set()) - {"HEAD"}):
                path = route.path.replace("{name}", "sleep")
                operation = spec["paths"][path][method.lower()]
                schemes = {name for need in operation.get("security", []) for name in need}
                expected = {
                    Guard.OPEN: set(),
                    Guard.WORK: {"bearer"},
                    Guard.START: {"bearer"},
                    Guard.WATCH: {"bearer", "watchToken"},
                    Guard.WATCH_EACH: {"bearer", "watchToken"},
                    Guard.FEED: {"bearer", "watchToken"},
                    Guard.CANCEL: {"bearer"},
                }[route.guard]
                assert schemes == expected, (method, path)
                if route.guard in (Guard.OPEN, Guard.WATCH_EACH):
                    continue
                concrete = path.replace("{task_id}", some_id).replace("{group_id}", some_id)
                concrete = concrete.replace("{owner}", "user:42")
                refused = await http.request(method, concrete)
                assert refused.status_code == 401, (method, path, refused.text)
                what = {"{group_id}": "group", "{owner}": "feed"}.get(
                    next((p for p in ("{group_id}", "{owner}") if p in path), ""), "task"
                )
                watching = route.guard in (Guard.WATCH, Guard.FEED)
                wanted = watch_refused(what) if watching else WORK_REFUSED
                assert refused.json() == {"error": "unauthorized", "detail": wanted}
                assert refused.headers["www-authenticate"] == 'Bearer realm="taskcast"'


async def test_a_record_missing_while_its_worker_beats_is_waited_for_everywhere(
    redis_client: redis.Redis,
) -> None:
    """The record is gone (a Redis restart without persistence, a failover), its worker
    still beats and will write it again. REST answered 404 meanwhile while sockets
    waited; now REST says so (503 record_missing, retry) and sockets keep waiting, a
    new subscriber included, until the record is back."""
    task_id = str(uuid.uuid4())
    running_record(redis_client, task_id)
    beat(redis_client, task_id, ago_s=0)
    settings = settings_with(poll_interval=0.05, stall_after=30.0)
    app = create_app(settings=settings)
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        hub: Hub = app.state.taskcast.hub
        async with ws_connect(url, f"/ws/tasks/{task_id}") as first:
            assert (await recv_json(first))["state"] == "PROGRESS"
            redis_client.delete(keys.task_meta_key(env.KEY_PREFIX, task_id))
            # (A deletion is announced on no channel: the hub's next poll sees it.)
            await eventually(lambda: hub.current(task_id), lambda update: update is None)
            for path in (f"/tasks/{task_id}", f"/celery-progress/{task_id}/"):
                missing = await http.get(path)
                assert missing.status_code == 503, missing.text
                assert missing.json()["error"] == "record_missing"
                assert missing.headers["retry-after"] == "1"
            assert (await http.get(f"/task-status/{task_id}")).status_code == 503
            async with ws_connect(url, f"/ws/tasks/{task_id}") as late:
                # Its worker writes again: both sockets are served the new record, and
                # neither was told anything in between.
                meta = {"status": "PROGRESS", "result": {"current": 4, "total": 5}}
                redis_client.set(keys.task_meta_key(env.KEY_PREFIX, task_id), json.dumps(meta))
                assert (await recv_json(late))["progress"]["current"] == 4
                assert (await recv_json(first))["progress"]["current"] == 4
            assert (await http.get(f"/tasks/{task_id}")).status_code == 200
