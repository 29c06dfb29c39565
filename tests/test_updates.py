"""One change, encoded once: the hub's update carries its text, and each transport that
writes it otherwise (celery-progress's object, an event stream's event) makes that form
once, for every connection of it, not once per connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from taskcast.api import sse
from taskcast.live import protocol
from tests.support import recv_json, write_progress, write_success, ws_connect

SOCKETS = 20


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count the calls of ``module.name`` (still calling it)."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


async def test_celery_progress_sockets_and_event_streams_encode_once_per_change(
    base_url: str, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = counting(monkeypatch, protocol, "task_progress")
    events = counting(monkeypatch, sse, "ServerSentEvent")
    task_id = str(uuid.uuid4())
    write_progress(task_id, 0, 3)
    check = json.dumps({"type": "check_task_completion"})
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(ws_connect(base_url, f"/ws/progress/{task_id}/"))
            for _ in range(SOCKETS)
        ]
        streams = [
            await stack.enter_async_context(client.stream("GET", f"/sse/tasks/{task_id}"))
            for _ in range(SOCKETS)
        ]
        for socket in sockets:
            await socket.send(check)
        for socket in sockets:
            assert (await recv_json(socket))["progress"]["current"] == 0
        changes = 1  # the snapshot
        for current in (1, 2):
            write_progress(task_id, current, 3)
            for socket in sockets:
                assert (await recv_json(socket))["progress"]["current"] == current
            changes += 1
        write_success(task_id)
        changes += 1
        for socket in sockets:
            assert (await recv_json(socket))["state"] == "SUCCESS"

        async def read_to_end(response: httpx.Response) -> str:
            return "".join([chunk async for chunk in response.aiter_text()])

        bodies = await asyncio.gather(*(read_to_end(stream) for stream in streams))
    for body in bodies:
        assert body.count("event: status") == changes
        assert body.endswith('event: end\r\ndata: {"type":"end"}\r\n\r\n')
    # One object per change for 20 sockets; one event per change for 20 streams.
    assert len(bars) == changes
    assert len(events) == changes
