"""The tutorial's way of reporting progress, as the baseline for Redis traffic.

Its status endpoint is a synchronous handler (run in a thread pool, as FastAPI runs a
plain ``def``) that builds an ``AsyncResult`` and reads ``state`` and ``info``. Each
read is a GET on the result backend, so every client's every poll costs Redis two
commands. (The tutorial itself read ``task.state`` and ``task.info`` several times
per request; reading each once makes this a lower bound on its cost.)
"""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bench.stack import serve_baseline
from taskcast_celery.demo.celery import app as celery_app


def task_status(request: Request) -> Response:
    result = AsyncResult(request.path_params["task_id"], app=celery_app)
    state = result.state
    info: Any = result.info
    if isinstance(info, dict):
        body = {"state": state, "current": info.get("current", 0), "total": info.get("total", 1)}
    else:
        body = {"state": state, "status": str(info)}
    return JSONResponse(body)


def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app() -> Starlette:
    return Starlette(
        routes=[Route("/task-status/{task_id}", task_status), Route("/healthz", healthz)]
    )


def main() -> None:
    serve_baseline(create_app(), __doc__ or "")


if __name__ == "__main__":
    main()
