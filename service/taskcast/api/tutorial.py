"""The tutorial's paths, with its response shapes, so its clients keep working.

The tutorial (FastAPI + Celery) exposed these; taskcast serves them on top of its own
machinery, without the tutorial's blocking ``AsyncResult`` reads and with the percent
computed instead of always 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from taskcast.api.dispatching import dispatch_task, watch_token
from taskcast.api.errors import ApiError
from taskcast.api.guards import Guard, GuardedRoute, app_state, guarded, read_status
from taskcast.api.queries import EmailQuery, ProgressQuery, SleepQuery
from taskcast.api.responses import json_response
from taskcast.api.validation import check_params, decode_json, parse_query, parse_task_id, read_body
from taskcast.limits import LimitReached
from taskcast.status import Status, encode_shaped
from taskcast_celery import states
from taskcast_celery.expose import Exposure


def _task(request: Request, name: str) -> Exposure:
    # Present: the route exists only where the app exposes the task (``routes``).
    return app_state(request).served.tasks[name]


async def _dispatch(request: Request, name: str, values: dict[str, Any]) -> str:
    exposure = _task(request, name)
    return await dispatch_task(request, exposure, check_params(exposure.params, values))


async def sync_process(request: Request) -> Response:
    """Run the job inside the request, as the tutorial's counter-example did (in a thread).

    At most ``SYNC_JOBS`` at a time, on a limiter of their own: on the shared one, forty
    of them held every thread that dispatch needs, and a POST waited seconds for one.
    Over the limit the answer is 503 at once, rather than a request queued for minutes.
    """
    query = parse_query(SleepQuery, request)
    state = app_state(request)
    task = state.served.celery.tasks[_task(request, "sleep").task_name]
    try:
        message = await state.sync_jobs.run(partial(task, seconds=query.seconds))
    except LimitReached as exc:
        raise ApiError(
            503, "busy", f"{exc}; retry, or queue the job with GET /async-process/",
            {"Retry-After": "1"},
        ) from None  # fmt: skip
    return json_response({"message": message})


async def async_process(request: Request) -> Response:
    query = parse_query(SleepQuery, request)
    task_id = await _dispatch(request, "sleep", {"seconds": query.seconds})
    reply = {"task_id": task_id, "status": "Task started"}
    return json_response({**reply, **watch_token(request, task_id)})


async def process_data_with_status(request: Request) -> Response:
    query = parse_query(ProgressQuery, request)
    task_id = await _dispatch(request, "progress", {"total": query.time, "step_seconds": 1.0})
    reply = {"message": "Processing started", "task_id": task_id}
    return json_response({**reply, **watch_token(request, task_id)})


async def process_and_email(request: Request) -> Response:
    """Queue the e-mail job: the address in the query, the data as the JSON body."""
    query = parse_query(EmailQuery, request)
    body = await read_body(request, app_state(request).settings.max_body_bytes)
    values: dict[str, Any] = {"to": query.email}
    if body.strip():
        values["data"] = decode_json(body)
    task_id = await _dispatch(request, "email", values)
    reply = {"message": "Processing started", "task_id": task_id}
    return json_response({**reply, **watch_token(request, task_id)})


def tutorial_shape(status: Status) -> dict[str, Any]:
    """The tutorial's status reply: ``{"state", "progress"}`` while pending (0) or
    running (the percent, computed where the tutorial read one its task never wrote),
    ``{"state", "result"}`` on success, ``{"state", "info": <text>}`` in any other state."""
    state = status["state"]
    progress = status["progress"]
    if state in (states.SENT, states.PENDING):
        # The tutorial knew a queued task only as PENDING.
        return {"state": states.PENDING, "progress": 0}
    if state == states.PROGRESS:
        percent = progress["percent"] if progress is not None else None
        return {"state": state, "progress": percent or 0}
    if state == states.SUCCESS:
        return {"state": state, "result": status["result"]}
    error = status["error"]
    if error is not None:
        info = error["message"] or error["type"]
    elif progress is not None and progress["message"] is not None:
        info = progress["message"]
    else:
        info = ""
    return {"state": state, "info": info}


async def task_status(request: Request) -> Response:
    task_id = parse_task_id(request.path_params["task_id"])
    status = await read_status(request, task_id)
    body = encode_shaped(status, tutorial_shape)
    return Response(body, media_type="application/json")


# Each path that starts work, with the exposed task it starts (each is guarded like a
# dispatch; GET /sync-process/ too: it holds a thread for up to a minute).
DISPATCH = {
    ("/sync-process/", "GET"): ("sleep", sync_process),
    ("/async-process/", "GET"): ("sleep", async_process),
    ("/process-and-email/", "POST"): ("email", process_and_email),
    ("/process-data-with-status/", "POST"): ("progress", process_data_with_status),
}


def routes(tasks: Mapping[str, Exposure]) -> list[GuardedRoute]:
    """The tutorial's paths: each one that starts a task where the app exposes a task of
    that name (the demo app exposes all three), and its status path always."""
    present = [
        guarded(path, endpoint, method, Guard.WORK)
        for (path, method), (name, endpoint) in DISPATCH.items()
        if name in tasks
    ]
    return [*present, guarded("/task-status/{task_id}", task_status, guard=Guard.WATCH)]
