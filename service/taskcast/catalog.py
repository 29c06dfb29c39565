"""The tasks a client may start, and the parameters each one accepts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    field_validator,
    model_validator,
)

# Largest ``data`` an e-mail task accepts, as JSON: it is rendered into the e-mail's body.
MAX_EMAIL_DATA_BYTES = 16 * 1024
# Longest a task may be asked to run. Tasks are acknowledged when they end, so one still
# running after TASKCAST_VISIBILITY_TIMEOUT is handed to a second worker as well: that
# timeout must be longer than this.
MAX_TASK_SECONDS = 3600


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer, also when JSON writes it 441.0: JSON Schema's "integer" is any number with
# no fractional part, and that is what the OpenAPI description promises. Still no bools,
# no strings, no 441.5 (the models are strict).
WholeNumber = Annotated[int, BeforeValidator(_whole)]


class Params(BaseModel):
    """Base of every parameter model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SleepParams(Params):
    seconds: float = Field(
        10.0, ge=0, le=MAX_TASK_SECONDS, description="How long to wait, in seconds."
    )


# The docstring is the model's OpenAPI description: it states the one rule of these
# parameters that JSON Schema cannot.
class ProgressParams(Params):
    """Count to total, a step every step_seconds: total * step_seconds must be at most
    3600 seconds (MAX_TASK_SECONDS)."""

    total: WholeNumber = Field(100, ge=1, le=100_000, description="How many steps to count.")
    step_seconds: float = Field(1.0, ge=0, le=60, description="Seconds per step.")
    # The bound before the validator, inside the union: only so does the JSON Schema
    # say "minimum" (after a BeforeValidator pydantic writes a "ge" no client knows).
    fail_at: Annotated[int, Field(ge=1), BeforeValidator(_whole)] | None = Field(
        None,
        description="Fail (raise RuntimeError) on reaching this step, to see what a failure "
        "looks like; at most total.",
    )

    @model_validator(mode="after")
    def _short_enough(self) -> ProgressParams:
        if self.fail_at is not None and self.fail_at > self.total:
            raise ValueError(f"fail_at must be at most total ({self.total}), got {self.fail_at}")
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
        try:
            size = len(orjson.dumps(data))
        except TypeError:
            # An integer past 64 bits: JSON has them, orjson refuses them (it was a 500).
            # The worker renders the data with the standard library, which takes them.
            size = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
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
