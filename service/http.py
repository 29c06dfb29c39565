"""REST routes: dispatch, status, cancel, health."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.auth import bearer
from service.catalog import TASKS
from service.dispatch import DispatchError
from service.errors import ApiError
from service.responses import json_response
from service.state import AppState
from service.status import Status, decode_status
from service.validation import parse_params, parse_task_id, read_body


def app_state(request: Request) -> AppState:
    """What the lifespan opened for this process."""
    state: AppState = request.app.state.taskcast
    return state


# RFC 6750: a 401 names the scheme that would be accepted.
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskcast"'}


def require_api_key(request: Request) -> None:
    """401 unless the caller may dispatch and cancel (an API key, when keys are set)."""
    if not app_state(request).auth.may_dispatch(bearer(request.headers.get("authorization"))):
        detail = "an API key is required: Authorization: Bearer <key>"
        raise ApiError(401, "unauthorized", detail, _CHALLENGE)


def require_watch(request: Request, task_id: str) -> None:
    """401 unless the caller may read the task (its token, or an API key, when tokens are
    on). Decided before the task is read: a known and an unknown id get the same answer."""
    auth = app_state(request).auth
    if not auth.may_watch(
        task_id, request.query_params.get("token"), bearer(request.headers.get("authorization"))
    ):
        detail = (
            "the task's watch token (?token= or Authorization: Bearer) or an API key "
            "is required; tokens expire"
        )
        raise ApiError(401, "unauthorized", detail, _CHALLENGE)


def watch_token(request: Request, task_id: str) -> dict[str, str]:
    """``{"token": ...}`` for a dispatch reply when tokens are on, else nothing."""
    token = app_state(request).auth.token(task_id)
    return {} if token is None else {"token": token}


def task_links(request: Request, task_id: str) -> dict[str, str]:
    """Where a client reads a task's status once (REST) and follows it live (WebSocket),
    with its watch token (in the reply, and in both URLs) when tokens are on."""
    token = watch_token(request, task_id)
    status_url = request.url_for("task_status", task_id=task_id).include_query_params(**token)
    ws_url = request.url_for("ws_task", task_id=task_id).include_query_params(**token)
    ws_url = ws_url.replace(scheme="wss" if ws_url.scheme == "https" else "ws")
    return {"task_id": task_id, "status_url": str(status_url), "ws_url": str(ws_url), **token}


async def dispatch_task(request: Request, celery_name: str, kwargs: Mapping[str, object]) -> str:
    """Publish a task, answering 503 (and queueing nothing) when the broker is down."""
    state = app_state(request)
    try:
        task_id = await state.dispatcher.submit(celery_name, dict(kwargs))
    except DispatchError as exc:
        state.metrics.dispatched(celery_name, "publish_failed")
        state.metrics.dispatch_redis_errors.inc()
        raise ApiError(503, "broker_unavailable", f"could not queue the task: {exc}") from None
    state.metrics.dispatched(celery_name, "ok")
    return task_id


async def read_status(request: Request, task_id: str) -> Status:
    """The status of a known task, or 404 ``unknown_task``."""
    raw = await app_state(request).store.read(task_id)
    if raw is None:
        raise ApiError(404, "unknown_task", f"no task with id {task_id}")
    return decode_status(task_id, raw)


async def submit(request: Request) -> Response:
    require_api_key(request)
    name = request.path_params["name"]
    spec = TASKS.get(name)
    if spec is None:
        known = ", ".join(sorted(TASKS))
        raise ApiError(404, "unknown_task_name", f"no task named {name!r}; known: {known}")
    try:
        body = await read_body(request, app_state(request).settings.max_body_bytes)
        params = parse_params(spec.params, body)
    except ApiError:
        app_state(request).metrics.dispatched(spec.celery_name, "invalid")
        raise
    task_id = await dispatch_task(request, spec.celery_name, params.model_dump())
    links = task_links(request, task_id)
    return json_response(links, status_code=202, headers={"Location": links["status_url"]})


async def task_status(request: Request) -> Response:
    task_id = parse_task_id(request.path_params["task_id"])
    require_watch(request, task_id)
    return json_response(await read_status(request, task_id))


async def cancel_task(request: Request) -> Response:
    # What dispatching needs, and what reading the task needs: an API key covers both;
    # with tokens but no keys, the task's token lets its holder cancel it.
    require_api_key(request)
    task_id = parse_task_id(request.path_params["task_id"])
    require_watch(request, task_id)
    status = await read_status(request, task_id)
    if status["final"]:
        raise ApiError(409, "already_final", f"task {task_id} already ended {status['state']}")
    await app_state(request).dispatcher.revoke(task_id)
    return json_response(task_links(request, task_id), status_code=202)


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = app_state(request)
    try:
        async with asyncio.timeout(state.settings.ready_timeout):
            await state.redis.ping()
    except Exception as exc:
        state.metrics.readyz_redis_errors.inc()
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return json_response({"status": "degraded", "redis": reason}, status_code=503)
    if not state.hub.healthy:
        # Redis answers again, but the hub has not yet caught up after the outage.
        return json_response({"status": "degraded", "redis": "recovering"}, status_code=503)
    return json_response({"status": "ready", "redis": "ok"})


routes = [
    Route("/tasks/{name}", submit, methods=["POST"]),
    Route("/tasks/{task_id}", task_status, methods=["GET"], name="task_status"),
    Route("/tasks/{task_id}", cancel_task, methods=["DELETE"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
