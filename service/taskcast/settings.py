"""Service settings: ``TASKCAST_*`` variables, read when the app is built.

Where Redis is, the key prefix, the queue and how long records live are not here: they
are the served Celery app's own configuration (``taskcast.served``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taskcast.limits import default_max_connections
from taskcast.tokens import MIN_SECRET_CHARS

# The demo app, served when no other is named: a Celery app like any other.
DEMO_APP = "taskcast_celery.demo"

# Shorter keys are refused at start: a guessable key protects nothing.
MIN_KEY_CHARS = 16


def _items(value: Any) -> Any:
    """A comma-separated list, as an environment variable holds one."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


class Settings(BaseSettings):
    """What the service reads from its environment (see the README's table)."""

    # Errors never quote what was given: it may be a key or the secret, bound for a log.
    model_config = SettingsConfigDict(
        env_prefix="TASKCAST_", env_ignore_empty=True, frozen=True, hide_input_in_errors=True
    )

    # The Celery app to serve, as ``celery -A`` names it (``proj``, ``proj.celery:app``).
    celery_app: str = DEMO_APP
    # Largest request body accepted, in bytes.
    max_body_bytes: PositiveInt = 64 * 1024
    # Bound on how long /readyz waits for Redis before answering "not ready".
    ready_timeout: PositiveFloat = 1.0
    # The hub's safety-net poll of watched tasks, in seconds.
    poll_interval: PositiveFloat = 0.5
    # Follow Celery's PUBLISH of each stored state (else poll only).
    push: bool = True
    # A client that stops reading for this long is closed (code 4408).
    slow_client_timeout: PositiveFloat = 30.0
    # Subscriptions one /ws socket may hold at once.
    max_subscriptions: PositiveInt = 100
    # Largest client WebSocket frame; a larger one closes the socket with 1009.
    ws_max_message_bytes: PositiveInt = 4096
    # permessage-deflate: off, since for small JSON frames it costs far more CPU and
    # memory per socket than it saves.
    ws_deflate: bool = False
    # WebSockets and event streams one client address may hold open in this process (0: no cap;
    # off by default: many real clients share one address, behind NAT or a proxy).
    max_connections_per_client: NonNegativeInt = 0
    # Connections this process may hold in all, every one counted from its accept (0: no
    # cap; default: its open-file limit less a reserve, so that no crowd or client can
    # exhaust it). The app counts its WebSockets and event streams against it too, for
    # when it runs under another server than ``taskcast serve``.
    max_connections: NonNegativeInt | None = None
    # Seconds a connection has to send a request's complete head, from its accept or the
    # end of its previous response; later, it is closed.
    header_timeout: PositiveFloat = 10.0
    # Largest request head (request line and headers) in bytes; larger: 431 and closed.
    # 32 KiB, as nginx's default: /sse following 100 tasks with their tokens takes 11.
    max_header_bytes: PositiveInt = 32 * 1024
    # Subscribes one /ws socket may send a second on average (0: no limit), in bursts of
    # up to subscribe_burst: enough to subscribe again to every task after a reconnect.
    subscribe_rate: NonNegativeFloat = 10.0
    subscribe_burst: PositiveInt = 100
    # Most members one POST /groups/{name} may start.
    max_group_size: PositiveInt = 1000
    # Seconds without a heartbeat after which a running task is called stalled (0: never);
    # at least twice the served app's heartbeat interval (checked when the app is built).
    stall_after: NonNegativeFloat = 30.0
    # Logs of ``taskcast serve``: "text" (uvicorn's) or "json" (one object a line).
    log_format: Literal["text", "json"] = "text"
    # The path prefix a proxy in front strips (``/jobs``: the proxy serves the service
    # under /jobs/ and forwards /jobs/tasks/x as /tasks/x), for the links and pages the
    # service hands out. Empty: served at the root.
    root_path: str = ""
    # Dev mode (``taskcast dev`` turns it on): serves GET /dev/outbox.
    dev: bool = False
    # Auth (docs/security.md), off while these are empty. Keys that may dispatch and
    # cancel; kept out of repr so that a logged Settings never shows a credential.
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field((), repr=False)
    # Signs watch tokens; when set, reading or watching a task needs its token.
    secret: str = Field("", repr=False)
    # Seconds a watch token stays valid (default: as long as the served app keeps records).
    token_ttl: PositiveInt | None = None
    # Whether an owner's feed token (taskcast.sign_feed_token), as a bearer credential,
    # may also start exposed tasks: always as that owner. Off: feed tokens only read.
    feed_tokens_may_start: bool = False
    # Origins whose pages may open WebSockets and call the API; empty: any may open a
    # WebSocket and no CORS is offered. ("*",) offers CORS to every origin.
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Host names the service answers to ("*": any). Listing them stops DNS rebinding: a
    # page whose own name was made to resolve to the service.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ("*",)

    @field_validator("api_keys", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _items(value)

    @field_validator("api_keys")
    @classmethod
    def _long_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(key) < MIN_KEY_CHARS for key in keys):
            # Never quote the key itself: this message reaches logs.
            raise ValueError(f"every key needs at least {MIN_KEY_CHARS} characters")
        return keys

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, secret: str) -> str:
        if secret and len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"needs at least {MIN_SECRET_CHARS} characters")
        return secret

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("root_path")
    @classmethod
    def _root_path(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.endswith("/") or "?" in value):
            raise ValueError(f"{value!r} is not a path prefix such as /jobs")
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        # Browsers send an origin as scheme://host[:port] in lower case, without a path.
        origins = tuple(origin.lower().rstrip("/") for origin in _items(value))
        for origin in origins:
            if origin != "*" and (
                not origin.startswith(("http://", "https://")) or "/" in origin.split("://", 1)[1]
            ):
                raise ValueError(
                    f"{origin!r} is not '*' or an origin such as https://app.example.com"
                )
        return origins

    def uvicorn_options(self) -> dict[str, Any]:
        """The protocols and options taskcast serves with (benchmarks reuse them for a
        baseline)."""
        # Here, not at the top: only serving needs uvicorn.
        from taskcast.live.http_transport import ConnectionLimits, http_protocol

        limits = ConnectionLimits(
            max_connections=default_max_connections()
            if self.max_connections is None
            else self.max_connections,
            header_timeout=self.header_timeout,
            max_header_bytes=self.max_header_bytes,
            slow_client_timeout=self.slow_client_timeout,
        )
        return {
            # uvicorn's httptools protocol, with a cap on connections counted from their
            # accept, a deadline and a bound on a request's head, and clients that stop
            # reading a response closed as a WebSocket's are.
            "http": http_protocol(limits),
            # uvicorn's sans-I/O implementation (its send() only waits while that one
            # socket's buffer is full, which the hub's mailboxes rely on), with a
            # keepalive that closes a client that stopped reading with 4408, within
            # slow_client_timeout: a ping every half of it, answered within the other half.
            "ws": "taskcast.live.ws_transport:TaskcastWebSocketProtocol",
            "ws_ping_interval": self.slow_client_timeout / 2,
            "ws_ping_timeout": self.slow_client_timeout / 2,
            "ws_max_size": self.ws_max_message_bytes,
            "ws_per_message_deflate": self.ws_deflate,
            "root_path": self.root_path,
        }


def explain(exc: ValidationError) -> str:
    """A settings error in the words of the environment: one line per variable at fault
    (``TASKCAST_STALL_AFTER: Input should be ...``), never the value given."""
    problems = []
    for problem in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in problem["loc"])
        name = f"TASKCAST_{field.upper()}" if field else "settings"
        problems.append(f"{name}: {problem['msg']}")
    return "; ".join(problems)
