"""Service settings, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskcast_celery.demo.app import settings as celery_settings
from taskcast_celery.demo.config import CelerySettings, parse_bool


@dataclass(frozen=True, slots=True)
class Settings:
    """What the service reads from its environment (see the README's table)."""

    # Where Redis is and the key prefix: the Celery app's own settings, read once when
    # ``taskcast_celery.demo.app`` is imported, so the service and the workers always agree.
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
    # Open WebSocket connections one client address may hold in this process (0: no cap).
    max_connections_per_client: int = 100
    # Subscribes one /ws socket may send a second on average (0: no limit), in bursts of
    # up to subscribe_burst: enough to subscribe again to every task after a reconnect.
    subscribe_rate: float = 10.0
    subscribe_burst: int = 100
    # Most members one POST /groups/{name} may start.
    max_group_size: int = 1000
    # Seconds without a heartbeat after which a running task is called stalled (0: never).
    stall_after: float = 30.0
    # Logs of ``taskcast serve``: "text" (uvicorn's) or "json" (one object a line).
    log_format: str = "text"
    # Dev mode (``taskcast dev`` turns it on): serves GET /dev/outbox.
    dev: bool = False
    # Auth (docs/security.md), off while these are empty. Keys that may dispatch and
    # cancel; kept out of repr so that a logged Settings never shows a credential.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Signs watch tokens; when set, reading or watching a task needs its token.
    secret: str = field(default="", repr=False)
    # Seconds a watch token stays valid (default: as long as the task's record).
    token_ttl: int = 86_400
    # Origins whose pages may open WebSockets and call the API; empty: any may open a
    # WebSocket and no CORS is offered. ("*",) offers CORS to every origin.
    allowed_origins: tuple[str, ...] = ()

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
            max_connections_per_client=int(env.get("TASKCAST_MAX_CONNECTIONS_PER_CLIENT", "100")),
            subscribe_rate=float(env.get("TASKCAST_SUBSCRIBE_RATE", "10")),
            subscribe_burst=int(env.get("TASKCAST_SUBSCRIBE_BURST", "100")),
            max_group_size=int(env.get("TASKCAST_MAX_GROUP_SIZE", "1000")),
            stall_after=_stall_after(env.get("TASKCAST_STALL_AFTER", "30")),
            log_format=_log_format(env.get("TASKCAST_LOG_FORMAT", "text")),
            dev=parse_bool(env.get("TASKCAST_DEV", "")),
            api_keys=_api_keys(env.get("TASKCAST_API_KEYS", "")),
            secret=_secret(env.get("TASKCAST_SECRET", "")),
            token_ttl=int(env.get("TASKCAST_TOKEN_TTL") or celery_settings.result_expires),
            allowed_origins=_origins(env.get("TASKCAST_ALLOWED_ORIGINS", "")),
        )


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


# Shorter credentials are refused at start: a guessable key or secret protects nothing.
_MIN_KEY_CHARS = 16
_MIN_SECRET_CHARS = 32


def _api_keys(text: str) -> tuple[str, ...]:
    keys = _items(text)
    if any(len(key) < _MIN_KEY_CHARS for key in keys):
        # Never quote the key itself: this message reaches logs.
        raise ValueError(f"TASKCAST_API_KEYS: every key needs at least {_MIN_KEY_CHARS} characters")
    return keys


def _secret(text: str) -> str:
    if text and len(text) < _MIN_SECRET_CHARS:
        raise ValueError(f"TASKCAST_SECRET needs at least {_MIN_SECRET_CHARS} characters")
    return text


def _origins(text: str) -> tuple[str, ...]:
    # Browsers send an origin as scheme://host[:port] in lower case, without a path.
    origins = tuple(origin.lower().rstrip("/") for origin in _items(text))
    for origin in origins:
        if origin != "*" and (
            not origin.startswith(("http://", "https://")) or "/" in origin.split("://", 1)[1]
        ):
            raise ValueError(
                f"TASKCAST_ALLOWED_ORIGINS: {origin!r} is not '*' or an origin such as "
                "https://app.example.com"
            )
    return origins


def _stall_after(text: str) -> float:
    stall_after = float(text)
    # A few missed beats, not one late one: the threshold must leave the workers' beat
    # (TASKCAST_HEARTBEAT_INTERVAL, read by the same Celery settings) room to be late.
    interval = celery_settings.heartbeat_interval
    if stall_after and stall_after < 2 * interval:
        raise ValueError(
            f"TASKCAST_STALL_AFTER must be 0 (off) or at least twice "
            f"TASKCAST_HEARTBEAT_INTERVAL ({interval:g} s), got {text!r}"
        )
    if stall_after < 0:
        raise ValueError(f"TASKCAST_STALL_AFTER must not be negative, got {text!r}")
    return stall_after


def _log_format(text: str) -> str:
    log_format = text.strip().lower()
    if log_format not in ("text", "json"):
        raise ValueError(f"TASKCAST_LOG_FORMAT must be text or json, got {text!r}")
    return log_format
