"""REST routes: dispatch, status, cancel, health."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal, TypedDict

from starlette.requests import Request
from starlette.responses import Response

from taskcast.api import paths
from taskcast.api.dispatching import (
    QUEUE_FAILED,
    GroupCancelled,
    dispatch_task,
    group_links,
    task_links,
)
from taskcast.api.errors import ApiError
from taskcast.api.guards import (
    Guard,
    app_state,
    guarded,
    ownership_of,
    read_group_status,
    read_members,
    read_status,
)
from taskcast.api.responses import json_response
from taskcast.api.validation import parse_group, parse_params, parse_task_id, read_body
from taskcast.broker import BrokerState
from taskcast.catalog import TaskList, describe
from taskcast.dispatch import DispatchError
from taskcast.status import decode_status, encode_status
from taskcast_celery.expose import Exposure

logger = logging.getLogger(__name__)


def exposed(request: Request) -> Exposure:
    """The exposed task the path's ``{name}`` names, or 404 ``unknown_task_name``."""
    name = request.path_params["name"]
    tasks = app_state(request).served.tasks
    exposure = tasks.get(name)
    if exposure is None:
        known = ", ".join(tasks) or "none (the app exposes no task)"
        raise ApiError(404, "unknown_task_name", f"no task named {name!r}; known: {known}")
    return exposure


async def submit(request: Request) -> Response:
    exposure = exposed(request)
    try:
        ownership = ownership_of(request)
        body = await read_body(request, app_state(request).settings.max_body_bytes)
        params = parse_params(exposure.params, body)
    except ApiError:
        app_state(request).metrics.dispatched(exposure.name, "invalid")
        raise
    task_id = await dispatch_task(request, exposure, params, ownership)
    links = task_links(request, task_id, ownership)
    return json_response(links, status_code=202, headers={"Location": links["status_url"]})


async def list_tasks(request: Request) -> Response:
    """The tasks clients may start, with their parameters' JSON Schema."""
    tasks = app_state(request).served.tasks
    reply: TaskList = {"tasks": [describe(exposure) for exposure in tasks.values()]}
    return json_response(reply)


async def task_status(request: Request) -> Response:
    task_id = parse_task_id(request.path_params["task_id"])
    status = await read_status(request, task_id)
    return Response(encode_status(status), media_type="application/json")


async def cancel_task(request: Request) -> Response:
    task_id = parse_task_id(request.path_params["task_id"])
    status = await read_status(request, task_id)
    if status["final"]:
        raise ApiError(409, "already_final", f"task {task_id} already ended {status['state']}")
    await app_state(request).dispatcher.revoke(task_id)
    return json_response(task_links(request, task_id), status_code=202)


async def submit_group(request: Request) -> Response:
    state = app_state(request)
    exposure = exposed(request)
    try:
        ownership = ownership_of(request)
        body = await read_body(request, state.settings.max_body_bytes)
        members = parse_group(exposure.params, body, state.settings.max_group_size)
    except ApiError:
        state.metrics.dispatched(exposure.name, "invalid")
        raise
    try:
        group_id, task_ids = await state.dispatcher.submit_group(
            exposure, [exposure.kwargs(params) for params in members], ownership
        )
    except DispatchError as exc:
        state.metrics.dispatched(exposure.name, "publish_failed", len(members))
        state.metrics.dispatch_redis_errors.inc()
        raise ApiError(503, "broker_unavailable", QUEUE_FAILED.format("group")) from exc
    state.metrics.dispatched(exposure.name, "ok", len(task_ids))
    links = group_links(request, group_id, task_ids, ownership)
    return json_response(links, status_code=202, headers={"Location": links["status_url"]})


async def group_status(request: Request) -> Response:
    group_id = parse_task_id(request.path_params["group_id"], what="group")
    return json_response(await read_group_status(request, group_id))


async def cancel_group(request: Request) -> Response:
    group_id = parse_task_id(request.path_params["group_id"], what="group")
    state = app_state(request)
    members = await read_members(request, group_id)
    records = (await state.store.read_many(members)).records
    unfinished = [
        task_id
        for task_id, raw in zip(members, records, strict=True)
        if raw is not None and not decode_status(task_id, raw)["final"]
    ]
    if not unfinished:
        raise ApiError(409, "already_final", f"every member of group {group_id} has ended")
    await state.dispatcher.revoke(*unfinished)
    links = group_links(request, group_id, list(members))
    reply: GroupCancelled = {**links, "revoked": unfinished}
    return json_response(reply, status_code=202)


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


RedisState = Literal["ok", "unreachable", "timed out", "recovering"]


class Readiness(TypedDict, total=False):
    """``/readyz``'s answer: each dependency's state, and what a degraded broker is."""

    status: Literal["ready", "degraded"]
    redis: RedisState
    broker: BrokerState
    detail: str


async def readyz(request: Request) -> Response:
    """Ready when the result store answers, the hub has caught up with it, and the broker
    takes a connection; each within TASKCAST_READY_TIMEOUT (checked at once, so the answer
    takes that long at most)."""
    state = app_state(request)
    timeout = state.settings.ready_timeout
    redis, broker = await asyncio.gather(
        _redis_readiness(request), state.dispatcher.broker.check(timeout)
    )
    reply: Readiness = {"status": "ready", "redis": redis, "broker": broker.state}
    if broker.detail is not None:
        # The broker's URL without its password: which of several brokers is down.
        reply["detail"] = broker.detail
    if redis != "ok" or not broker.ok:
        reply["status"] = "degraded"
        return json_response(reply, status_code=503)
    return json_response(reply)


async def _redis_readiness(request: Request) -> RedisState:
    state = app_state(request)
    try:
        async with asyncio.timeout(state.settings.ready_timeout):
            await state.redis.ping()
    except Exception as exc:
        state.metrics.readyz_redis_errors.inc()
        # The kind of failure only: the exception's text names hosts and ports.
        logger.warning("readiness: Redis did not answer: %r", exc)
        return "timed out" if isinstance(exc, TimeoutError) else "unreachable"
    if not state.hub.healthy:
        # Redis answers again, but the hub has not yet caught up after the outage.
        return "recovering"
    return "ok"


routes = [
    guarded("/tasks", list_tasks),
    guarded("/tasks/{name}", submit, "POST", Guard.START),
    guarded(paths.TASK_STATUS, task_status, guard=Guard.WATCH),
    guarded(paths.TASK_STATUS, cancel_task, "DELETE", Guard.CANCEL),
    guarded("/groups/{name}", submit_group, "POST", Guard.START),
    guarded(paths.GROUP_STATUS, group_status, guard=Guard.WATCH),
    guarded(paths.GROUP_STATUS, cancel_group, "DELETE", Guard.CANCEL),
    guarded("/healthz", healthz),
    guarded("/readyz", readyz),
]
