"""The application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from starlette.applications import Starlette

from service import http, openapi, tutorial
from service.dispatch import Dispatcher
from service.errors import EXCEPTION_HANDLERS
from service.settings import Settings
from service.state import AppState
from service.store import ResultStore
from workers.app import celery_app


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the service; ``settings`` default to the environment's."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = Redis.from_url(settings.celery.result_backend_url)
        app.state.taskcast = AppState(
            settings=settings,
            redis=redis,
            store=ResultStore(redis, settings.celery.key_prefix),
            dispatcher=Dispatcher(celery_app, settings.celery),
        )
        try:
            yield
        finally:
            await redis.aclose()

    return Starlette(
        routes=[*http.routes, *tutorial.routes, *openapi.routes],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
