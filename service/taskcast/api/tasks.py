"""REST routes: dispatch, status, cancel, health."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, NotRequired
from urllib.parse import urlencode

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# pydantic reads TypedDicts (for their JSON Schema) only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from taskcast.api import paths
from taskcast.api.errors import ApiError
from taskcast.api.responses import json_response
from taskcast.api.validation import parse_group, parse_params, parse_task_id, read_body
from taskcast.auth import bearer
from taskcast.catalog import TaskList, describe
from taskcast.dispatch import DispatchError
from taskcast.groups import GroupStatus, GroupTally
from taskcast.liveness import is_stalled
from taskcast.state import AppState
from taskcast.status import Status, UuidText, decode_status, encode_status
from taskcast_celery.expose import Exposure


def app_state(request: Request) -> AppState:
    """What the lifespan opened for this process."""
    state: AppState = request.app.state.taskcast
    return state


logger = logging.getLogger(__name__)

# A failed publish, as the client hears of it (the reason goes to the log).
_QUEUE_FAILED = "could not queue the {}: the broker or the result store is unavailable; retry"

# RFC 6750: a 401 names the scheme that would be accepted.
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskcast"'}


def authorize_work(request: Request) -> None:
    """Whether the caller may start or cancel work: 403 for a page of another site (CSRF,
    whatever the auth settings), then 401 without an API key where keys are set."""
    state = app_state(request)
    foreign = state.sites.foreign_page(request.headers)
    if foreign is not None:
        state.metrics.foreign_refused.inc()
        raise ApiError(
            403,
            "forbidden_origin",
            f"{foreign}; a page of another site may start or cancel work only when "
            "TASKCAST_ALLOWED_ORIGINS lists its origin",
        )
    if not state.auth.may_dispatch(bearer(request.headers.get("authorization"))):
        detail = "an API key is required: Authorization: Bearer <key>"
        raise ApiError(401, "unauthorized", detail, _CHALLENGE)


def require_watch(request: Request, watched_id: str, what: str = "task") -> None:
    """401 unless the caller may read the task (or group: ``what``): its token, or an API
    key, when tokens are on. Decided before anything is read: a known and an unknown id
    get the same answer."""
    auth = app_state(request).auth
    if not auth.tokens_required:
        return  # Anyone may: not even the query string needs parsing.
    if not auth.may_watch(
        watched_id, request.query_params.get("token"), bearer(request.headers.get("authorization"))
    ):
        detail = (
            f"the {what}'s watch token (?token= or Authorization: Bearer) or an API key "
            "is required; tokens expire"
        )
        raise ApiError(401, "unauthorized", detail, _CHALLENGE)


def watch_token(request: Request, watched_id: str) -> dict[str, str]:
    """``{"token": ...}`` for a dispatch reply when tokens are on, else nothing."""
    token = app_state(request).auth.token(watched_id)
    return {} if token is None else {"token": token}


_TOKEN = Field(
    description="the watch token, present when the service signs them (TASKCAST_SECRET); "
    "status_url and ws_url carry it too"
)


class TaskLinks(TypedDict):
    """Where a started (or cancelled) task is read once (REST) and followed (WebSocket)."""

    task_id: UuidText
    status_url: str
    ws_url: str
    token: NotRequired[Annotated[str, _TOKEN]]


class GroupLinks(TypedDict):
    """Where a started group is read once (REST) and followed (WebSocket), and its members."""

    group_id: UuidText
    task_ids: list[UuidText]
    status_url: str
    ws_url: str
    token: NotRequired[Annotated[str, _TOKEN]]


class GroupCancelled(GroupLinks):
    """A cancelled group: its links, and the members that were cancelled (those that had
    not ended)."""

    revoked: list[UuidText]


def _links(request: Request, status_path: str, ws_path: str, **ids: str) -> tuple[str, str, str]:
    """A task's or group's REST and WebSocket URLs (as ``url_for`` would make them: the
    request's scheme, host and root path), with its watch token (in both URLs, and
    returned third: "" when tokens are off). The ids are checked UUIDs: nothing in them
    needs quoting."""
    (watched_id,) = ids.values()
    token = app_state(request).auth.token(watched_id)
    query = "" if token is None else "?" + urlencode({"token": token})
    base = request.base_url
    root = f"{base.netloc}{base.path.rstrip('/')}"
    ws_scheme = "wss" if base.scheme == "https" else "ws"
    status_url = f"{base.scheme}://{root}{status_path.format(**ids)}{query}"
    ws_url = f"{ws_scheme}://{root}{ws_path.format(**ids)}{query}"
    return status_url, ws_url, token or ""


def task_links(request: Request, task_id: str) -> TaskLinks:
    """Where a client reads a task's status once (REST) and follows it live (WebSocket),
    with its watch token (in the reply, and in both URLs) when tokens are on."""
    status_url, ws_url, token = _links(request, paths.TASK_STATUS, paths.WS_TASK, task_id=task_id)
    links: TaskLinks = {"task_id": task_id, "status_url": status_url, "ws_url": ws_url}
    if token:
        links["token"] = token
    return links


async def dispatch_task(request: Request, exposure: Exposure, params: BaseModel) -> str:
    """Publish a task with checked parameters, answering 503 (and queueing nothing) when
    the broker is down."""
    state = app_state(request)
    try:
        task_id = await state.dispatcher.submit(exposure, exposure.kwargs(params))
    except DispatchError as exc:
        state.metrics.dispatched(exposure.name, "publish_failed")
        state.metrics.dispatch_redis_errors.inc()
        # What failed, and where (hosts, ports), is the operator's to read, in the log.
        raise ApiError(503, "broker_unavailable", _QUEUE_FAILED.format("task")) from exc
    state.metrics.dispatched(exposure.name, "ok")
    return task_id


async def read_status(request: Request, task_id: str) -> Status:
    """The status of a known task, or 404 ``unknown_task``."""
    state = app_state(request)
    raw, beat, now_ms = await state.store.read_one(task_id)
    if raw is None:
        raise ApiError(404, "unknown_task", f"no task with id {task_id}")
    status = decode_status(task_id, raw)
    status["stalled"] = is_stalled(status["state"], beat, now_ms, state.settings.stall_after)
    return status


def group_links(request: Request, group_id: str, task_ids: list[str]) -> GroupLinks:
    """A group's REST and WebSocket URLs, with its watch token when tokens are on."""
    status_url, ws_url, token = _links(
        request, paths.GROUP_STATUS, paths.WS_GROUP, group_id=group_id
    )
    links: GroupLinks = {
        "group_id": group_id,
        "task_ids": task_ids,
        "status_url": status_url,
        "ws_url": ws_url,
    }
    if token:
        links["token"] = token
    return links


async def read_members(request: Request, group_id: str) -> tuple[str, ...]:
    """A known group's member ids, or 404 ``unknown_group``."""
    members = await app_state(request).group_members(group_id)
    if members is None:
        raise ApiError(404, "unknown_group", f"no group with id {group_id}")
    return members


async def read_group_status(request: Request, group_id: str) -> GroupStatus:
    """A known group's status, from one read of every member's record and heartbeat."""
    state = app_state(request)
    members = await read_members(request, group_id)
    reading = await state.store.read_many(members, members)
    tally = GroupTally(group_id, members)
    for task_id, raw, beat in zip(members, reading.records, reading.beats, strict=True):
        status = None if raw is None else decode_status(task_id, raw)
        # (Redis's clock is there whenever a member is: it came with their heartbeats.)
        if status is not None and reading.now_ms is not None:
            stall_after = state.settings.stall_after
            status["stalled"] = is_stalled(status["state"], beat, reading.now_ms, stall_after)
        tally.update(task_id, status, raw)
    return tally.status()


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
    authorize_work(request)
    exposure = exposed(request)
    try:
        body = await read_body(request, app_state(request).settings.max_body_bytes)
        params = parse_params(exposure.params, body)
    except ApiError:
        app_state(request).metrics.dispatched(exposure.name, "invalid")
        raise
    task_id = await dispatch_task(request, exposure, params)
    links = task_links(request, task_id)
    return json_response(links, status_code=202, headers={"Location": links["status_url"]})


async def list_tasks(request: Request) -> Response:
    """The tasks clients may start, with their parameters' JSON Schema."""
    tasks = app_state(request).served.tasks
    reply: TaskList = {"tasks": [describe(exposure) for exposure in tasks.values()]}
    return json_response(reply)


async def task_status(request: Request) -> Response:
    task_id = parse_task_id(request.path_params["task_id"])
    require_watch(request, task_id)
    status = await read_status(request, task_id)
    return Response(encode_status(status), media_type="application/json")


async def cancel_task(request: Request) -> Response:
    # What dispatching needs, and what reading the task needs: an API key covers both;
    # with tokens but no keys, the task's token lets its holder cancel it.
    authorize_work(request)
    task_id = parse_task_id(request.path_params["task_id"])
    require_watch(request, task_id)
    status = await read_status(request, task_id)
    if status["final"]:
        raise ApiError(409, "already_final", f"task {task_id} already ended {status['state']}")
    await app_state(request).dispatcher.revoke(task_id)
    return json_response(task_links(request, task_id), status_code=202)


async def submit_group(request: Request) -> Response:
    authorize_work(request)
    state = app_state(request)
    exposure = exposed(request)
    try:
        body = await read_body(request, state.settings.max_body_bytes)
        members = parse_group(exposure.params, body, state.settings.max_group_size)
    except ApiError:
        state.metrics.dispatched(exposure.name, "invalid")
        raise
    try:
        group_id, task_ids = await state.dispatcher.submit_group(
            exposure, [exposure.kwargs(params) for params in members]
        )
    except DispatchError as exc:
        state.metrics.dispatched(exposure.name, "publish_failed", len(members))
        state.metrics.dispatch_redis_errors.inc()
        raise ApiError(503, "broker_unavailable", _QUEUE_FAILED.format("group")) from exc
    state.metrics.dispatched(exposure.name, "ok", len(task_ids))
    links = group_links(request, group_id, task_ids)
    return json_response(links, status_code=202, headers={"Location": links["status_url"]})


async def group_status(request: Request) -> Response:
    group_id = parse_task_id(request.path_params["group_id"], what="group")
    require_watch(request, group_id, what="group")
    return json_response(await read_group_status(request, group_id))


async def cancel_group(request: Request) -> Response:
    authorize_work(request)
    group_id = parse_task_id(request.path_params["group_id"], what="group")
    require_watch(request, group_id, what="group")
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


async def readyz(request: Request) -> Response:
    state = app_state(request)
    try:
        async with asyncio.timeout(state.settings.ready_timeout):
            await state.redis.ping()
    except Exception as exc:
        state.metrics.readyz_redis_errors.inc()
        # The kind of failure only: the exception's text names hosts and ports.
        logger.warning("readiness: Redis did not answer: %r", exc)
        reason = "timed out" if isinstance(exc, TimeoutError) else "unreachable"
        return json_response({"status": "degraded", "redis": reason}, status_code=503)
    if not state.hub.healthy:
        # Redis answers again, but the hub has not yet caught up after the outage.
        return json_response({"status": "degraded", "redis": "recovering"}, status_code=503)
    return json_response({"status": "ready", "redis": "ok"})


routes = [
    Route("/tasks", list_tasks, methods=["GET"]),
    Route("/tasks/{name}", submit, methods=["POST"]),
    Route(paths.TASK_STATUS, task_status, methods=["GET"]),
    Route(paths.TASK_STATUS, cancel_task, methods=["DELETE"]),
    Route("/groups/{name}", submit_group, methods=["POST"]),
    Route(paths.GROUP_STATUS, group_status, methods=["GET"]),
    Route(paths.GROUP_STATUS, cancel_group, methods=["DELETE"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
