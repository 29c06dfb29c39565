"""The tasks a client may start, and the parameters each one accepts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

# Largest ``data`` an e-mail task accepts, as JSON: it is rendered into the e-mail's body.
MAX_EMAIL_DATA_BYTES = 16 * 1024
# Longest a task may be asked to run. Tasks are acknowledged when they end, so one still
# running after TASKCAST_VISIBILITY_TIMEOUT is handed to a second worker as well: that
# timeout must be longer than this.
MAX_TASK_SECONDS = 3600


class Params(BaseModel):
    """Base of every parameter model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SleepParams(Params):
    seconds: float = Field(
        10.0, ge=0, le=MAX_TASK_SECONDS, description="How long to wait, in seconds."
    )


class ProgressParams(Params):
    total: int = Field(100, ge=1, le=100_000, description="How many steps to count.")
    step_seconds: float = Field(1.0, ge=0, le=60, description="Seconds per step.")

    @model_validator(mode="after")
    def _short_enough(self) -> ProgressParams:
        # Each bound alone allows 69 days; together they keep to the one for every task.
        if self.total * self.step_seconds > MAX_TASK_SECONDS:
            raise ValueError(
                f"total * step_seconds must be at most {MAX_TASK_SECONDS} seconds, "
                f"got {self.total * self.step_seconds:g}"
            )
        return self


class EmailParams(Params):
    to: EmailStr = Field(description="Where the e-mail goes.")
    data: dict[str, Any] = Field(
        description=f"The data to process: a JSON object of at most {MAX_EMAIL_DATA_BYTES} "
        "bytes, reported in the e-mail."
    )

    @field_validator("data")
    @classmethod
    def _small_enough(cls, data: dict[str, Any]) -> dict[str, Any]:
        size = len(orjson.dumps(data))
        if size > MAX_EMAIL_DATA_BYTES:
            raise ValueError(f"must be at most {MAX_EMAIL_DATA_BYTES} bytes as JSON, got {size}")
        return data


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
    "email": TaskSpec(
        "taskcast.email", EmailParams, "Process data, then e-mail the result through Mailtrap."
    ),
}
