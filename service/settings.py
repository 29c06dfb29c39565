"""Service settings, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.app import settings as celery_settings
from workers.config import CelerySettings, parse_bool


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
    # The hub's safety-net poll of watched tasks, in seconds.
    poll_interval: float = 0.5
    # Follow Celery's PUBLISH of each stored state (else poll only).
    push: bool = True
    # A client that stops reading for this long is closed (code 4408).
    slow_client_timeout: float = 30.0
    # Subscriptions one /ws socket may hold at once.
    max_subscriptions: int = 100
    # Largest client WebSocket frame; a larger one closes the socket with 1009.
    ws_max_message_bytes: int = 4096
    # permessage-deflate: off, since for small JSON frames it costs far more CPU and
    # memory per socket than it saves.
    ws_deflate: bool = False
    # Dev mode (``taskcast dev`` turns it on): serves GET /dev/outbox.
    dev: bool = False

    def uvicorn_options(self) -> dict[str, Any]:
        """The WebSocket options taskcast serves with (benchmarks reuse them for a baseline)."""
        return {
            # The sans-I/O implementation: its send() only waits while that one socket's
            # buffer is full, which the hub's per-connection mailboxes rely on.
            "ws": "websockets-sansio",
            "ws_max_size": self.ws_max_message_bytes,
            "ws_per_message_deflate": self.ws_deflate,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            max_body_bytes=int(env.get("TASKCAST_MAX_BODY_BYTES", "65536")),
            ready_timeout=float(env.get("TASKCAST_READY_TIMEOUT", "1.0")),
            poll_interval=float(env.get("TASKCAST_POLL_INTERVAL", "0.5")),
            push=parse_bool(env.get("TASKCAST_PUSH", "true")),
            slow_client_timeout=float(env.get("TASKCAST_SLOW_CLIENT_TIMEOUT", "30")),
            max_subscriptions=int(env.get("TASKCAST_MAX_SUBSCRIPTIONS", "100")),
            ws_max_message_bytes=int(env.get("TASKCAST_WS_MAX_MESSAGE_BYTES", "4096")),
            ws_deflate=parse_bool(env.get("TASKCAST_WS_DEFLATE", "false")),
            dev=parse_bool(env.get("TASKCAST_DEV", "")),
        )
