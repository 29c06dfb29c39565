from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis
from starlette.applications import Starlette

from tests import env  # first: sets the environment before taskcast is imported

# isort: split
from taskcast.live.hub import Hub
from taskcast.state import AppState
from tests.browser import browser, chromium  # noqa: F401 (every test's fixtures)
from tests.mailtrap_server import FakeMailtrap
from tests.support import WorkerProcess, running_server, session_app


@pytest.fixture(scope="session", autouse=True)
def environment() -> Iterator[None]:
    """This session's Redis and fake Mailtrap, set in the environment before the first
    test (never at collection; see tests/env.py)."""
    with env.session():
        yield


@pytest.fixture(scope="session")
def redis_client(environment: None) -> Iterator[redis.Redis]:
    """A synchronous client for assertions; removes this session's keys at the end."""
    client = redis.Redis.from_url(env.REDIS_URL)
    yield client
    for key in client.scan_iter(match=f"{env.KEY_PREFIX}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def worker(redis_client: redis.Redis) -> Iterator[WorkerProcess]:
    """One real Celery worker for the whole session."""
    process = WorkerProcess(concurrency=2)
    process.start()
    try:
        deadline_pings = 0
        while not session_app().control.ping(destination=[process.hostname], timeout=0.5):
            deadline_pings += 1
            assert deadline_pings < 60, "the test worker did not answer within 30 s"
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def mailtrap_server(environment: None) -> Iterator[FakeMailtrap]:
    """The session's fake Mailtrap, which every worker sends to (see ``tests.env``)."""
    env.MAILTRAP.start()
    yield env.MAILTRAP
    env.MAILTRAP.stop()


@pytest.fixture
def mailtrap(mailtrap_server: FakeMailtrap) -> FakeMailtrap:
    """The fake Mailtrap, with nothing received yet and nothing scripted."""
    mailtrap_server.reset()
    return mailtrap_server


@pytest.fixture(scope="session")
def app() -> Starlette:
    from taskcast.app import create_app

    return create_app()


@pytest.fixture(scope="session")
async def base_url(app: Starlette, worker: WorkerProcess) -> AsyncIterator[str]:
    """A real uvicorn serving the app on a free port, with the worker running."""
    async with running_server(app) as url:
        yield url


@pytest.fixture
def hub(app: Starlette, base_url: str) -> Hub:
    """The hub of the session's server (to check what it watches)."""
    state: AppState = app.state.taskcast
    return state.hub


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        yield http


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_errors() -> Iterator[list[logging.LogRecord]]:
    """Every error the servers log during the test (uvicorn's own logger included: an
    exception in the app is logged there, whatever the client is told); there must be
    none."""
    handler = _Errors()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "taskcast")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)
    assert not handler.records, [handler.format(record) for record in handler.records]
