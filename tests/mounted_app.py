"""A team's own FastAPI app, with routes and a lifespan of its own, and taskcast mounted
under ``/jobs`` as the README shows (tests/test_mount.py serves it with uvicorn:
``uvicorn tests.mounted_app:api``).

It serves the session's demo app, which reads this session's Redis from the environment
the test passes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import taskcast
from taskcast_celery.demo.celery import app as celery_app


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    # The team's own start-up; taskcast's lifespan is not chained here: it starts itself.
    api.state.greeting = "hello from the team's app"
    yield


api = FastAPI(lifespan=lifespan)


@api.get("/hello")
async def hello() -> dict[str, str]:
    return {"greeting": api.state.greeting}


api.mount("/jobs", taskcast.create_app(celery_app))
