"""Worker-side settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def normalize_prefix(prefix: str) -> str:
    """Return ``prefix`` ending in a separator, as Celery's backend would make it.

    Celery appends ``_`` to a global key prefix that does not end in one of ``:_-.``;
    doing the same here keeps the keys the service computes equal to the worker's.
    """
    if prefix and prefix[-1] not in ":_-.":
        return prefix + "_"
    return prefix


def parse_bool(value: str) -> bool:
    """Read a yes/no setting: ``1/true/yes/on`` or ``0/false/no/off`` (empty is no)."""
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True, slots=True)
class CelerySettings:
    """Where Celery keeps its queue and its results."""

    broker_url: str
    result_backend_url: str
    key_prefix: str = ""
    result_expires: int = 86_400
    queue: str = "celery"
    # Seconds before the Redis broker hands an unacknowledged task to another worker:
    # how soon a task whose worker died outright runs again. It must exceed the longest
    # task, or a task still running is delivered twice (tasks are acknowledged late).
    visibility_timeout: int = 7200
    # Seconds between a running task's heartbeats (taskcast_celery.heartbeat); the service calls
    # a task stalled after TASKCAST_STALL_AFTER seconds without one.
    heartbeat_interval: float = 5.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> CelerySettings:
        env = os.environ if environ is None else environ
        redis_url = env.get("TASKCAST_REDIS_URL") or DEFAULT_REDIS_URL
        return cls(
            broker_url=env.get("TASKCAST_BROKER_URL") or redis_url,
            result_backend_url=env.get("TASKCAST_RESULT_BACKEND_URL") or redis_url,
            key_prefix=normalize_prefix(env.get("TASKCAST_KEY_PREFIX", "")),
            result_expires=int(env.get("TASKCAST_RESULT_EXPIRES", "86400")),
            queue=env.get("TASKCAST_QUEUE") or "celery",
            visibility_timeout=int(env.get("TASKCAST_VISIBILITY_TIMEOUT", "7200")),
            heartbeat_interval=_positive(
                "TASKCAST_HEARTBEAT_INTERVAL", env.get("TASKCAST_HEARTBEAT_INTERVAL", "5")
            ),
        )


def _positive(name: str, text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {text!r}")
    return value
