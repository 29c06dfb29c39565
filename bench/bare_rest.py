"""The ceiling for one-off status: a bare Starlette endpoint that reads a task's record
with one ``redis.asyncio`` GET and answers it as JSON with orjson. Nothing that answers
``GET /tasks/{id}`` from the same Redis on Starlette and uvicorn can do much less."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bench.stack import serve_baseline


def create_app() -> Starlette:
    url = os.environ["TASKCAST_REDIS_URL"]
    prefix = os.environ.get("TASKCAST_KEY_PREFIX", "")
    clients: dict[str, Redis] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        clients["redis"] = Redis.from_url(url)
        yield
        await clients["redis"].aclose()

    async def status(request: Request) -> Response:
        key = f"{prefix}celery-task-meta-{request.path_params['task_id']}"
        raw = await clients["redis"].get(key)
        if raw is None:
            return Response(b'{"error":"unknown_task"}', 404, media_type="application/json")
        return Response(orjson.dumps(orjson.loads(raw)), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/tasks/{task_id}", status), Route("/healthz", healthz)],
        lifespan=lifespan,
    )


def main() -> None:
    serve_baseline(create_app(), __doc__ or "")


if __name__ == "__main__":
    main()
