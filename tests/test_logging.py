"""Logs of `taskcast serve`: one JSON object a line when asked, with task ids, no secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile

import httpx
import pytest

from taskcast.cli.logs import JsonFormatter
from taskcast.settings import Settings
from tests import env
from tests.support import eventually, service_process


def read_lines(path: str) -> list[str]:
    with open(path) as log:
        return log.read().splitlines()


async def test_json_logs_carry_the_task_id_and_no_secret() -> None:
    # The session's Mailtrap token is in this environment, as a careless deployment might
    # hand it to the web service as well as to workers.
    assert os.environ["MAILTRAP_API_TOKEN"] == env.MAILTRAP_TOKEN
    with tempfile.NamedTemporaryFile(prefix="taskcast-log-", suffix=".log") as output:
        environ = {**os.environ, "TASKCAST_LOG_FORMAT": "json"}
        async with (
            service_process(environ, log_level="info", output=output.fileno()) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):
            reply = await http.post("/tasks/sleep", json={"seconds": 60})
            assert reply.status_code == 202
            task_id = reply.json()["task_id"]
            assert (await http.delete(f"/tasks/{task_id}")).status_code == 202
            # The access log line of the DELETE is written after its response.
            await eventually(
                lambda: asyncio.to_thread(read_lines, output.name),
                lambda lines: any("DELETE /tasks/" in line for line in lines),
            )
        lines = read_lines(output.name)

    entries = [json.loads(line) for line in lines]  # each line is one JSON object
    for entry in entries:
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry)
    tagged = [entry for entry in entries if entry.get("task_id") == task_id]
    assert [(entry["logger"], entry["level"], entry["message"]) for entry in tagged] == [
        ("taskcast.dispatch", "INFO", f"queued taskcast.sleep as {task_id}"),
        ("taskcast.dispatch", "INFO", f"revoking {task_id}"),
    ]
    # uvicorn's own lines (start-up, access log) are JSON too.
    assert {"uvicorn.error", "uvicorn.access"} <= {entry["logger"] for entry in entries}
    assert env.MAILTRAP_TOKEN not in "\n".join(lines)


def test_json_formatter_keeps_to_its_fields() -> None:
    record = logging.LogRecord(
        "taskcast.live.hub", logging.ERROR, __file__, 1, "read %s", ("x",), None
    )
    record.task_id = "1f0c9e2a-0000-4000-8000-000000000000"
    record.api_key = "whatever a log site had at hand"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert set(entry) == {"time", "level", "logger", "message", "task_id", "exception"}
    expected = ("ERROR", "taskcast.live.hub", "read x")
    assert (entry["level"], entry["logger"], entry["message"]) == expected
    assert entry["time"].endswith("+00:00")
    assert "RuntimeError: boom" in entry["exception"]


def test_an_unknown_log_format_stops_the_service_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASKCAST_LOG_FORMAT", raising=False)
    assert Settings().log_format == "text"
    monkeypatch.setenv("TASKCAST_LOG_FORMAT", "JSON")
    assert Settings().log_format == "json"
    monkeypatch.setenv("TASKCAST_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match=r"log_format\n.*'text' or 'json'"):
        Settings()
