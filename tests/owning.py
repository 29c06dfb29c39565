"""Helpers for the tests of owners' tasks (history, feeds, dispatch as an owner)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis

import taskcast
from taskcast.app import create_app
from tests.support import eventually, running_server, session_app, settings_with

# A short demo task: three steps, quick.
QUICK = {"total": 3, "step_seconds": 0.05}
KEY = "key-" + "k" * 30
SECRET = "s" * 40


def new_owner(kind: str = "user") -> str:
    """An owner of this test's own, so that no other test's tasks are in its history."""
    return f"{kind}:{uuid.uuid4().hex[:12]}"


def start_owned(owner: str, tags: tuple[str, ...] = (), **params: Any) -> str:
    """Start the demo app's progress task from this process, owned by ``owner``."""
    task = session_app().tasks["taskcast.progress"]
    with taskcast.owned_by(owner, tags=tags):
        return str(task.delay(**{**QUICK, **params}).id)


def redis_now_ms(client: redis.Redis) -> int:
    """Redis's clock, which stamps every history entry, in ms."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def past(client: redis.Redis, ms: int) -> None:
    """Wait until Redis's clock is past ``ms``: a task sent next sorts strictly newer
    than one sent at ``ms`` (ties in the same ms go by id, at random)."""
    await eventually(lambda: redis_now_ms(client), lambda now: now > ms, within=5)


def bearer(credential: str) -> dict[str, str]:
    """An ``Authorization`` header with ``credential``."""
    return {"Authorization": f"Bearer {credential}"}


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[str]:
    """A server of the session's app, with the session's settings changed by ``settings``
    (keys, a secret): its base URL."""
    async with running_server(create_app(settings=settings_with(**settings))) as url:
        yield url
