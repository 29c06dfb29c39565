"""The query parameters of the tutorial's paths: checked by its endpoints, described by
``/openapi.json``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, EmailStr, Field


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SleepQuery(_Query):
    seconds: float = Field(10.0, ge=0, le=60, description="How long the job takes.")


# The tutorial's job runs a second per step: at most an hour, as for every demo task.
MAX_TIME = 3600


class ProgressQuery(_Query):
    time: int = Field(100, ge=1, le=MAX_TIME, description="Seconds the job runs, one step each.")


class EmailQuery(_Query):
    email: EmailStr = Field(description="Where the e-mail goes.")
