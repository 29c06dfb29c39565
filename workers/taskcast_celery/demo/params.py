"""The demo tasks' parameters: what clients may ask of them, checked before queueing."""

from __future__ import annotations

import json
from typing import Annotated, Any

import orjson
from pydantic import BeforeValidator, EmailStr, Field, field_validator, model_validator

from taskcast_celery.expose import Params, WholeNumber, whole_number

# Largest ``data`` an e-mail task accepts, as JSON: it is rendered into the e-mail's body.
MAX_EMAIL_DATA_BYTES = 16 * 1024
# Longest a task may be asked to run. Tasks are acknowledged when they end, so one still
# running after TASKCAST_VISIBILITY_TIMEOUT is handed to a second worker as well: that
# timeout must be longer than this.
MAX_TASK_SECONDS = 3600


class SleepParams(Params):
    # Examples are what a form (the demo page's) starts with; defaults what is assumed.
    seconds: float = Field(
        10.0, ge=0, le=MAX_TASK_SECONDS, description="How long to wait, in seconds.", examples=[5]
    )


# The docstring is the model's OpenAPI description: it states the one rule of these
# parameters that JSON Schema cannot.
class ProgressParams(Params):
    """Count to total, a step every step_seconds: total * step_seconds must be at most
    3600 seconds (MAX_TASK_SECONDS)."""

    total: WholeNumber = Field(
        100, ge=1, le=100_000, description="How many steps to count.", examples=[20]
    )
    step_seconds: float = Field(1.0, ge=0, le=60, description="Seconds per step.", examples=[0.5])
    # The bound before the validator, inside the union: only so does the JSON Schema
    # say "minimum" (after a BeforeValidator pydantic writes a "ge" no client knows).
    fail_at: Annotated[int, Field(ge=1), BeforeValidator(whole_number)] | None = Field(
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
    to: EmailStr = Field(description="Where the e-mail goes.", examples=["ada@example.com"])
    data: dict[str, Any] = Field(
        description=f"The data to process: a JSON object of at most {MAX_EMAIL_DATA_BYTES} "
        "bytes, reported in the e-mail.",
        examples=[{"rows": 3}],
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
