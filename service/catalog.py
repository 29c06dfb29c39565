"""The tasks a client may start, and the parameters each one accepts."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    """Base of every parameter model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SleepParams(Params):
    seconds: float = Field(10.0, ge=0, le=3600, description="How long to wait, in seconds.")


class ProgressParams(Params):
    total: int = Field(100, ge=1, le=100_000, description="How many steps to count.")
    step_seconds: float = Field(1.0, ge=0, le=60, description="Seconds per step.")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task as the API names it: the Celery task it runs and its parameter model."""

    celery_name: str
    params: type[Params]
    summary: str


TASKS: dict[str, TaskSpec] = {
    "sleep": TaskSpec("taskcast.sleep", SleepParams, "Wait a number of seconds."),
    "progress": TaskSpec(
        "taskcast.progress", ProgressParams, "Count to a total, reporting progress."
    ),
}
