"""The application factory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from celery import Celery
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from taskcast import metrics
from taskcast.api import celery_progress, demo, dev, feeds, openapi, sse, tasks, tutorial, ws
from taskcast.api.errors import EXCEPTION_HANDLERS
from taskcast.auth import Auth, SiteCheck, Sites
from taskcast.dispatch import Dispatcher
from taskcast.limits import ClientConnections, InRequestJobs, default_max_connections
from taskcast.live.hub import Hub
from taskcast.metrics import LIFESPAN_KEY, Metrics
from taskcast.redis_pool import connect
from taskcast.served import ServedApp, load_app, serve_app
from taskcast.serverlogs import filter_server_logs
from taskcast.settings import Settings
from taskcast.state import AppState
from taskcast.store import ResultStore

_DAY = 86_400
_VANISH_GRACE = 30.0


def check_stall_threshold(stall_after: float, heartbeat_interval: float) -> None:
    """A few missed beats, not one late one: TASKCAST_STALL_AFTER must leave the workers'
    beat room to be late (0 turns stall detection off)."""
    if stall_after and stall_after < 2 * heartbeat_interval:
        raise ValueError(
            f"TASKCAST_STALL_AFTER must be 0 (off) or at least twice the workers' heartbeat "
            f"interval (TASKCAST_HEARTBEAT_INTERVAL, {heartbeat_interval:g} s), got {stall_after:g}"
        )


def create_app(celery_app: Celery | None = None, *, settings: Settings | None = None) -> Service:
    """The taskcast service for a taskcast-ready Celery app, as an ASGI app.

    ``celery_app`` is served, or else the one ``settings.celery_app`` names (as ``taskcast
    serve --app`` does); ``settings`` default to the environment's, read once here. Run
    it alone (``uvicorn --factory taskcast.app:create_app``), or mount it under any
    prefix of an ASGI app of yours::

        api = FastAPI()
        api.mount("/jobs", taskcast.create_app(celery_app))

    Nothing more is needed: see ``Service``."""
    settings = settings or Settings()
    if celery_app is None:
        served = load_app(settings.celery_app)
    else:
        served = serve_app(celery_app, celery_app.main or "the given app")
    check_stall_threshold(settings.stall_after, served.heartbeat_interval)
    # Watch tokens travel in URLs, which uvicorn logs: blanked there before any request.
    filter_server_logs()
    return Service(settings, served)


def serve_app_process() -> Service:
    """``taskcast serve``'s factory, which each of its processes calls: the service for
    the environment's settings, in a process of its own.

    What is loaded by now (the Celery app, its tasks, the schemas) lives as long as the
    process: frozen out of the collector's sight, a full collection no longer walks it
    every few thousand allocations. Only here: in a process of someone else's (an app
    it is mounted in, tests), freezing would keep that program's garbage too."""
    service = create_app()
    gc.freeze()
    return service


class Service(Starlette):
    """The service: its routes, and a lifespan that opens Redis and runs the hub.

    Where it runs as the server's app, or where the app it is mounted in chains its
    lifespan (``async with service.router.lifespan_context(service)``), that lifespan is
    used. Mounted without (Starlette and FastAPI run no lifespan of a mounted app), the
    first request starts the same lifespan on a task of its own; the end of the event
    loop (``asyncio.run`` cancels what still runs) closes it, as a server's shutdown
    would have."""

    def __init__(self, settings: Settings, served: ServedApp) -> None:
        self.settings = settings
        self.served = served
        sites = Sites(settings.allowed_origins, settings.allowed_hosts)
        self.sites = sites
        # The loop whose lifespan is running (None: none is).
        self._running: asyncio.AbstractEventLoop | None = None
        # The lifespan a request started, when the server or the outer app ran none.
        self._background: _Background | None = None
        # Dev-only routes are absent, not refused, outside dev mode: they answer 404.
        dev_routes = dev.routes if settings.dev else []
        super().__init__(
            routes=[
                *tasks.routes,
                *feeds.routes,
                *ws.routes,
                *sse.routes,
                *tutorial.routes(served.tasks),
                *celery_progress.routes,
                *openapi.routes,
                *metrics.routes,
                *demo.routes,
                *dev_routes,
            ],
            middleware=_site_middleware(sites, settings.allowed_origins),
            exception_handlers=EXCEPTION_HANDLERS,
            lifespan=_lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and self._running is not asyncio.get_running_loop():
            await self._start_in_background()
        await super().__call__(scope, receive, send)

    async def aclose(self) -> None:
        """Stop the lifespan a request started (where no server or outer app ran one):
        for a program that stops taskcast before its event loop ends (tests do). Without
        it, the end of the loop stops it."""
        background, self._background = self._background, None
        if background is not None and not background.task.done():
            background.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background.task

    async def _start_in_background(self) -> None:
        loop = asyncio.get_running_loop()
        # No await between the test and the assignment: concurrent first requests share
        # one start.
        if self._background is None or self._background.loop is not loop:
            self._background = _Background(self, loop)
        try:
            await asyncio.shield(self._background.started)
        except BaseException:
            # Not started (Redis's URL, say): the next request tries again.
            if self._background is not None and self._background.started.done():
                self._background = None
            raise


# The lifespans requests started, while they run.
_BACKGROUND: set[asyncio.Task[None]] = set()


class _Background:
    """A service's lifespan run by a task of the loop, for as long as the loop runs."""

    def __init__(self, service: Service, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started: asyncio.Future[None] = loop.create_future()
        self.task = loop.create_task(self._run(service), name="taskcast-lifespan")
        # A hard reference until it ends: the loop keeps only a weak one to its tasks,
        # and a service dropped while its lifespan runs would leave it to the collector
        # (closing it mid-await, its clean-up never run).
        _BACKGROUND.add(self.task)
        self.task.add_done_callback(_BACKGROUND.discard)

    async def _run(self, service: Service) -> None:
        try:
            async with service.router.lifespan_context(service):
                self.started.set_result(None)
                # Until cancelled: by asyncio.run, as the loop ends.
                await asyncio.Event().wait()
        except BaseException as exc:
            if not self.started.done():
                self.started.set_exception(exc)
                return
            raise


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[dict[str, Metrics]]:
    """What a service process opens (Redis, the hub) and closes as it stops."""
    service = cast(Service, app)
    settings, served = service.settings, service.served
    redis = connect(served)
    store = ResultStore(redis, served.key_prefix)
    app_metrics = Metrics(served.tasks)
    hub = Hub(
        store,
        metrics=app_metrics,
        poll_interval=settings.poll_interval,
        push=settings.push,
        slow_client_timeout=settings.slow_client_timeout,
        stall_after=settings.stall_after,
        # One beat, and the poll that reads it, after Redis is back.
        stall_grace=served.heartbeat_interval + settings.poll_interval,
        # A vanished record with no heartbeat for this long is an unknown task.
        vanish_grace=settings.stall_after or _VANISH_GRACE,
    )
    app.state.taskcast = AppState(
        settings=settings,
        served=served,
        redis=redis,
        store=store,
        dispatcher=Dispatcher(served),
        hub=hub,
        metrics=app_metrics,
        clients=ClientConnections(
            settings.max_connections_per_client,
            default_max_connections()
            if settings.max_connections is None
            else settings.max_connections,
        ),
        # A token lasts, by default, as long as the record of what it opens.
        auth=Auth(settings, settings.token_ttl or served.result_expires or _DAY),
        sync_jobs=InRequestJobs(),
        sites=service.sites,
    )
    # A hard reference: the loop itself keeps only a weak one to its tasks.
    hub_task = asyncio.create_task(hub.run(), name="taskcast-hub")
    app_metrics.track(hub.stats)
    service._running = asyncio.get_running_loop()
    try:
        # The lifespan state: where the server's HTTP protocol finds the metrics to
        # count the connections it refuses and closes (taskcast.live.http_transport).
        yield {LIFESPAN_KEY: app_metrics}
    finally:
        service._running = None
        hub_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hub_task
        await hub.close()
        await redis.aclose()


def _site_middleware(sites: Sites, origins: tuple[str, ...]) -> list[Middleware]:
    """Host names and WebSocket origins checked first (``SiteCheck``); CORS for the
    origins of TASKCAST_ALLOWED_ORIGINS, when it is set (unset: browsers keep the API to
    the service's own pages)."""
    checks = [Middleware(SiteCheck, sites=sites)]
    if not origins:
        return checks
    cors = Middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Location"],
        max_age=600,
    )
    return [*checks, cors]
