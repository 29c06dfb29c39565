"""The tutorial's paths, with its response shapes, so its clients keep working.

The tutorial (FastAPI + Celery) exposed these; taskcast serves them on top of its own
machinery, without the tutorial's blocking ``AsyncResult`` reads and with the percent
computed instead of always 0.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio.to_thread
from celery import states
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
from taskcast.catalog import MAX_TASK_SECONDS, TASKS, EmailParams
from taskcast.status import Status
from taskcast_celery.demo import tasks
from taskcast_celery.states import SENT


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SleepQuery(_Query):
    seconds: float = Field(10.0, ge=0, le=60, description="How long the job takes.")


class ProgressQuery(_Query):
    time: int = Field(ge=1, le=MAX_TASK_SECONDS, description="Seconds the job runs, one step each.")


class EmailQuery(_Query):
    email: EmailStr = Field(description="Where the e-mail goes.")


async def sync_process(request: Request) -> Response:
    """Run the job inside the request, as the tutorial's counter-example did (in a thread)."""
    # Keyed like a dispatch: it holds a thread for up to a minute.
    require_api_key(request)
    query = parse_query(SleepQuery, request)
    message = await anyio.to_thread.run_sync(partial(tasks.sleep, seconds=query.seconds))
    return json_response({"message": message})


async def async_process(request: Request) -> Response:
    require_api_key(request)
    query = parse_query(SleepQuery, request)
    task_id = await dispatch_task(request, TASKS["sleep"].celery_name, {"seconds": query.seconds})
    reply = {"message": "Task started", "task_id": task_id}
    return json_response({**reply, **watch_token(request, task_id)})


async def process_data_with_status(request: Request) -> Response:
    require_api_key(request)
    query = parse_query(ProgressQuery, request)
    kwargs = {"total": query.time, "step_seconds": 1.0}
    task_id = await dispatch_task(request, TASKS["progress"].celery_name, kwargs)
    return json_response({"task_id": task_id, **watch_token(request, task_id)})


async def process_and_email(request: Request) -> Response:
    """Queue the e-mail job: the address in the query, the data as the JSON body."""
    require_api_key(request)
    query = parse_query(EmailQuery, request)
    body = await read_body(request, app_state(request).settings.max_body_bytes)
    values: dict[str, Any] = {"to": query.email}
    if body.strip():
        values["data"] = parse_json(body)
    params = check_params(EmailParams, values)
    task_id = await dispatch_task(request, TASKS["email"].celery_name, params.model_dump())
    reply = {"message": "Email task started", "task_id": task_id}
    return json_response({**reply, **watch_token(request, task_id)})


def tutorial_shape(status: Status) -> dict[str, Any]:
    """The tutorial's status reply: ``state`` plus ``status`` text or progress counters."""
    state = status["state"]
    if state in (SENT, states.PENDING):
        # The tutorial knew queued tasks only as PENDING.
        return {"state": states.PENDING, "status": "Pending..."}
    if state in (states.FAILURE, states.REVOKED):
        error = status["error"] or {}
        return {"state": state, "status": error.get("message", "")}
    progress = status["progress"] or {}
    shaped: dict[str, Any] = {
        "state": state,
        "current": progress.get("current") or 0,
        "total": progress.get("total") or 1,
        "percent": progress.get("percent") or 0,
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


routes = [
    Route("/sync-process/", sync_process, methods=["GET"]),
    Route("/async-process/", async_process, methods=["GET"]),
    Route("/process-and-email/", process_and_email, methods=["POST"]),
    Route("/process-data-with-status/", process_data_with_status, methods=["POST"]),
    Route("/task-status/{task_id}", task_status, methods=["GET"]),
]
