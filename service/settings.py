"""Service settings, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from workers.app import settings as celery_settings
from workers.config import CelerySettings


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the service reads from its environment (see the README's table)."""

    # Where Redis is and the key prefix: the Celery app's own settings, read once when
    # ``workers.app`` is imported, so the service and the workers always agree.
    celery: CelerySettings = field(default_factory=lambda: celery_settings)
    # Largest request body accepted, in bytes.
    max_body_bytes: int = 64 * 1024
    # Bound on how long /readyz waits for Redis before answering "not ready".
    ready_timeout: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            max_body_bytes=int(env.get("TASKCAST_MAX_BODY_BYTES", "65536")),
            ready_timeout=float(env.get("TASKCAST_READY_TIMEOUT", "1.0")),
        )
