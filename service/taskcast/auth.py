"""Who may do what (docs/security.md): API keys to dispatch and cancel, signed watch
tokens to read or follow one task, and the origins whose pages may open WebSockets.

Every comparison with a key or a MAC takes the same time whatever the input, and
nothing here logs a key, the secret or a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from taskcast.settings import Settings
from taskcast.tokens import sign, verify


def bearer(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, if any."""
    scheme, _, credential = (authorization or "").partition(" ")
    credential = credential.strip()
    return credential if scheme.lower() == "bearer" and credential else None


def _digest(value: str) -> bytes:
    # Keys are compared as digests: equal lengths, so not even a key's length shows.
    return hashlib.sha256(value.encode()).digest()


class Auth:
    """The service's credentials, built once from its settings."""

    def __init__(
        self, settings: Settings, token_ttl: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = tuple(_digest(key) for key in settings.api_keys)
        self._secret = settings.secret.encode()
        self._ttl = token_ttl
        self._clock = clock

    def __repr__(self) -> str:
        return f"Auth(keys={len(self._keys)}, tokens={self.tokens_required})"

    @property
    def keys_required(self) -> bool:
        """Whether dispatch and cancel need an API key."""
        return bool(self._keys)

    @property
    def tokens_required(self) -> bool:
        """Whether reading or watching a task needs its token (or an API key)."""
        return bool(self._secret)

    def is_api_key(self, credential: str | None) -> bool:
        """Whether ``credential`` is one of the keys."""
        if credential is None:
            return False
        digest = _digest(credential)
        found = False
        # Every key is compared, found or not: the time taken tells nothing of which one.
        for key in self._keys:
            found |= hmac.compare_digest(digest, key)
        return found

    def may_dispatch(self, bearer_credential: str | None) -> bool:
        """Whether a caller presenting this bearer credential may dispatch and cancel."""
        return not self.keys_required or self.is_api_key(bearer_credential)

    def token(self, task_id: str) -> str | None:
        """A fresh watch token for the task; None when tokens are off."""
        if not self.tokens_required:
            return None
        return sign(self._secret, task_id, int(self._clock()) + self._ttl)

    def may_watch(self, task_id: str, token: str | None, bearer_credential: str | None) -> bool:
        """Whether a caller may read or follow the task: with tokens off anyone may;
        else it needs the task's token (``token``, or as the bearer credential), or an
        API key as the bearer credential. Nothing about the task is read to decide."""
        if not self.tokens_required or self.is_api_key(bearer_credential):
            return True
        now = self._clock()
        return any(
            candidate is not None and verify(self._secret, candidate, task_id, now)
            for candidate in (token, bearer_credential)
        )


# -- origins -----------------------------------------------------------------------


def origin_allowed(allowed: Collection[str], headers: Headers) -> bool:
    """Whether a WebSocket handshake may proceed, judged by its ``Origin``.

    No ``Origin``: not a browser, which is what the check protects (a page of another
    site opening a socket with its visitor's network position); other clients are
    held by tokens and keys. The service's own pages (Origin host = Host) are always
    allowed, so the demo page works whatever the list says.
    """
    origin = headers.get("origin")
    if origin is None or not allowed or "*" in allowed:
        return True
    origin = origin.lower()
    return origin in allowed or urlsplit(origin).netloc == headers.get("host", "").lower()


class OriginCheck:
    """Refuses WebSocket handshakes from origins not allowed, before they are accepted:
    the client gets HTTP 403 with a JSON error body and never a socket."""

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app = app
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or origin_allowed(self.allowed, Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        if "websocket.http.response" not in scope.get("extensions", {}):
            # A server without the denial-response extension answers a plain 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        body = orjson.dumps(
            {"error": "forbidden_origin", "detail": "this origin may not open WebSockets here"}
        )
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})


# -- logs --------------------------------------------------------------------------

_TOKEN_IN_URL = re.compile(r"(?<=[?&]token=)[^&\s\"]+")


class RedactTokens(logging.Filter):
    """Blanks ``token=`` query values in uvicorn's request lines (access log, and the
    WebSocket lines of its error log), which quote each path with its query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_URL.sub("[redacted]", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


_REDACT = RedactTokens()


def redact_tokens_in_server_logs() -> None:
    """Install the filter on uvicorn's loggers (once: a logger keeps one copy of a filter)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(_REDACT)
