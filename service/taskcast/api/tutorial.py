"""The tutorial's paths, with its response shapes, so its clients keep working.

The tutorial (FastAPI + Celery) exposed these; taskcast serves them on top of its own
machinery, without the tutorial's blocking ``AsyncResult`` reads and with the percent
computed instead of always 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from taskcast.api.responses import json_response
from taskcast.api.tasks import (
    app_state,
    dispatch_task,
    read_status,
    require_api_key,
    require_watch,
    watch_token,
)
from taskcast.api.validation import check_params, parse_json, parse_query, parse_task_id, read_body
from taskcast.status import Status
from taskcast_celery import states
from taskcast_celery.expose import Exposure


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SleepQuery(_Query):
    seconds: float = Field(10.0, ge=0, le=60, description="How long the job takes.")


# The tutorial's job runs a second per step: at most an hour, as for every demo task.
MAX_TIME = 3600


class ProgressQuery(_Query):
    time: int = Field(ge=1, le=MAX_TIME, description="Seconds the job runs, one step each.")


class EmailQuery(_Query):
    email: EmailStr = Field(description="Where the e-mail goes.")


def _task(request: Request, name: str) -> Exposure:
    # Present: the route exists only where the app exposes the task (``routes``).
    return app_state(request).served.tasks[name]


async def _dispatch(request: Request, name: str, values: dict[str, Any]) -> str:
    exposure = _task(request, name)
    return await dispatch_task(request, exposure, check_params(exposure.params, values))


async def sync_process(request: Request) -> Response:
    """Run the job inside the request, as the tutorial's counter-example did (in a thread)."""
    # Keyed like a dispatch: it holds a thread for up to a minute.
    require_api_key(request)
    query = parse_query(SleepQuery, request)
    exposure = _task(request, "sleep")
    task = app_state(request).served.celery.tasks[exposure.task_name]
    message = await anyio.to_thread.run_sync(partial(task, seconds=query.seconds))
    return json_response({"message": message})


async def async_process(request: Request) -> Response:
    require_api_key(request)
    query = parse_query(SleepQuery, request)
    task_id = await _dispatch(request, "sleep", {"seconds": query.seconds})
    reply = {"message": "Task started", "task_id": task_id}
    return json_response({**reply, **watch_token(request, task_id)})


async def process_data_with_status(request: Request) -> Response:
    require_api_key(request)
    query = parse_query(ProgressQuery, request)
    task_id = await _dispatch(request, "progress", {"total": query.time, "step_seconds": 1.0})
    return json_response({"task_id": task_id, **watch_token(request, task_id)})


async def process_and_email(request: Request) -> Response:
    """Queue the e-mail job: the address in the query, the data as the JSON body."""
    require_api_key(request)
    query = parse_query(EmailQuery, request)
    body = await read_body(request, app_state(request).settings.max_body_bytes)
    values: dict[str, Any] = {"to": query.email}
    if body.strip():
        values["data"] = parse_json(body)
    task_id = await _dispatch(request, "email", values)
    reply = {"message": "Email task started", "task_id": task_id}
    return json_response({**reply, **watch_token(request, task_id)})


def tutorial_shape(status: Status) -> dict[str, Any]:
    """The tutorial's status reply: ``state`` plus ``status`` text or progress counters."""
    state = status["state"]
    if state in (states.SENT, states.PENDING):
        # The tutorial knew queued tasks only as PENDING.
        return {"state": states.PENDING, "status": "Pending..."}
    if state in (states.FAILURE, states.REVOKED):
        error = status["error"]
        return {"state": state, "status": "" if error is None else error["message"]}
    progress = status["progress"]
    shaped: dict[str, Any] = {
        "state": state,
        "current": (progress and progress["current"]) or 0,
        "total": (progress and progress["total"]) or 1,
        "percent": (progress and progress["percent"]) or 0,
    }
    if state == states.SUCCESS:
        shaped["current"] = shaped["total"]
        shaped["percent"] = 100.0
        shaped["result"] = status["result"]
    return shaped


async def task_status(request: Request) -> Response:
    task_id = parse_task_id(request.path_params["task_id"])
    require_watch(request, task_id)
    return json_response(tutorial_shape(await read_status(request, task_id)))


# Each path that starts work, with the exposed task it starts.
DISPATCH = {
    ("/sync-process/", "GET"): ("sleep", sync_process),
    ("/async-process/", "GET"): ("sleep", async_process),
    ("/process-and-email/", "POST"): ("email", process_and_email),
    ("/process-data-with-status/", "POST"): ("progress", process_data_with_status),
}


def routes(tasks: Mapping[str, Exposure]) -> list[Route]:
    """The tutorial's paths: each one that starts a task where the app exposes a task of
    that name (the demo app exposes all three), and its status path always."""
    present = [
        Route(path, endpoint, methods=[method])
        for (path, method), (name, endpoint) in DISPATCH.items()
        if name in tasks
    ]
    return [*present, Route("/task-status/{task_id}", task_status, methods=["GET"])]
