"""The exposed tasks as clients see them: ``GET /tasks``, the command line, the demo page.

Each entry is the task's API name, one line of what it does, and the JSON Schema of its
parameters, the same schema that ``/openapi.json`` describes it with.
"""

from __future__ import annotations

from functools import cache
from typing import Any

# pydantic reads TypedDicts (for their JSON Schema) only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from taskcast_celery.expose import Exposure


class TaskEntry(TypedDict):
    """A task clients may start: its name, what it does, its parameters' JSON Schema."""

    name: str
    summary: str
    params: dict[str, Any]


class TaskList(TypedDict):
    """``GET /tasks``: every task clients may start."""

    tasks: list[TaskEntry]


@cache
def params_schema(exposure: Exposure) -> dict[str, Any]:
    """The JSON Schema of a task's parameters (made once per task)."""
    schema: dict[str, Any] = exposure.params.model_json_schema()
    return schema


def describe(exposure: Exposure) -> TaskEntry:
    """A task's entry in ``GET /tasks``: ``{"name", "summary", "params"}``."""
    return {"name": exposure.name, "summary": exposure.summary, "params": params_schema(exposure)}
