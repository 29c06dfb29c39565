"""The query parameters of the tutorial's paths and of an owner's history: checked by
their endpoints, described by ``/openapi.json``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from taskcast.history import MAX_LIMIT
from taskcast_celery.owners import TAG_PATTERN


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


# The latest time a member of an owner's list can say (keys.history_member counts down
# from 10**13 ms).
_LATEST_MS = 10**13 - 1


class HistoryQuery(_Query):
    """``GET /feeds/{owner}/tasks``: which tasks, and which page."""

    state: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Only tasks in this state (SENT, STARTED, PROGRESS, SUCCESS, FAILURE, "
        "REVOKED, or a task's own); a running task's is its live record's.",
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Only tasks of this name: its Celery name, or the name it is exposed under.",
    )
    tag: str | None = Field(
        None,
        pattern=TAG_PATTERN,
        description="Only tasks with this tag.",
    )
    since: int | None = Field(
        None,
        ge=0,
        le=_LATEST_MS,
        description="Only tasks sent at this time or later: Unix milliseconds, as sent_at.",
    )
    limit: int = Field(50, ge=1, le=MAX_LIMIT, description="Most tasks on the page.")
    cursor: str | None = Field(
        None,
        min_length=1,
        max_length=400,
        description="Where the page starts: the next_cursor of the page before.",
    )
    token: str | None = Field(
        None,
        max_length=400,
        description="The owner's feed token, where the service signs tokens (or send it as "
        "Authorization: Bearer).",
    )
