"""Where the demo app keeps its queue and its results, read from the environment.

Only the demo app reads these: an app of your own brings its own configuration, and
taskcast takes the broker, the result backend, the key prefix and the queue from it.
"""

from __future__ import annotations

from pydantic import NonNegativeInt, PositiveInt, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class DemoSettings(BaseSettings):
    """``TASKCAST_*`` settings of the demo app (the README's configuration table)."""

    model_config = SettingsConfigDict(env_prefix="TASKCAST_", env_ignore_empty=True, frozen=True)

    # Redis for both the broker and the result backend, unless they are kept apart.
    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = ""
    result_backend_url: str = ""
    # With URLs of Sentinels (sentinel://host:26379;sentinel://host:26380/0), the name of
    # the master they watch, and their own password where they have one.
    redis_sentinel_master: str = ""
    redis_sentinel_password: SecretStr | None = None
    # A prefix for every Redis key and channel, to share a Redis with others.
    key_prefix: str = ""
    queue: str = "celery"
    # Seconds a task's record is kept (0: for ever).
    result_expires: NonNegativeInt = 86_400
    # Seconds before the Redis broker hands an unacknowledged task to another worker:
    # how soon a task whose worker died outright runs again. It must exceed the longest
    # task, or a task still running is delivered twice (tasks are acknowledged late).
    visibility_timeout: PositiveInt = 7200

    @model_validator(mode="after")
    def _apart_or_together(self) -> DemoSettings:
        # Frozen: the defaults are filled in as the model is built.
        if not self.broker_url:
            object.__setattr__(self, "broker_url", self.redis_url)
        if not self.result_backend_url:
            object.__setattr__(self, "result_backend_url", self.redis_url)
        return self
