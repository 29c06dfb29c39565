"""Who may do what (docs/security.md): API keys to dispatch and cancel, signed watch
tokens to read or follow one task, and the origins whose pages may open WebSockets.

Every comparison with a key or a MAC takes the same time whatever the input, and
nothing here logs a key, the secret or a token.
"""

from __future__ import annotations

import hashlib
import hmac
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


# Seconds a token minted elsewhere may seem to outlast TASKCAST_TOKEN_TTL: the minting
# machine's clock may run ahead of this one's.
CLOCK_SKEW = 60


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
        # No token lasts longer than TASKCAST_TOKEN_TTL from now, whoever minted it (with
        # a minute for a producer's clock ahead of this one's): shortening the TTL
        # shrinks the window of a leaked token, as docs/security.md says.
        longest = self._ttl + CLOCK_SKEW
        return any(
            candidate is not None and verify(self._secret, candidate, task_id, now, max_ttl=longest)
            for candidate in (token, bearer_credential)
        )


# -- sites: origins and hosts ------------------------------------------------------


def _host_name(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8000``: ``[::1]``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0]


class Sites:
    """Which pages may use the service from a visitor's browser, and which host names it
    answers to (``TASKCAST_ALLOWED_ORIGINS``, ``TASKCAST_ALLOWED_HOSTS``).

    A browser says where a request comes from (``Origin``; ``Sec-Fetch-Site``, which a
    page cannot forge; at the least ``Referer``, where it sends neither); a script or
    curl says none of them, and is held by keys and tokens.
    The service's own page is one whose origin names the very host the request went to;
    but the ``Host`` header is the client's word: a DNS-rebinding page has its own name
    resolve to the service, and sends matching ``Origin`` and ``Host``. So where origins
    are listed, a page's own host counts only when the service checks host names.
    """

    def __init__(self, origins: Collection[str], hosts: Collection[str]) -> None:
        self.origins = frozenset(origins)
        self.any_origin = "*" in self.origins
        self.hosts = frozenset(_host_name(host) for host in hosts if host != "*")
        self.any_host = not self.hosts

    def host_allowed(self, headers: Headers) -> bool:
        """Whether the request names a host the service answers to."""
        return self.any_host or _host_name(headers.get("host", "")) in self.hosts

    def _own_page(self, origin: str, headers: Headers) -> bool:
        return urlsplit(origin).netloc == headers.get("host", "").lower()

    def may_open_socket(self, headers: Headers) -> bool:
        """Whether a WebSocket handshake may proceed, by its ``Origin``: any, where no
        origins are listed (a socket only reads what its tokens open); else a listed
        origin, or the service's own page on a host it checks."""
        origin = headers.get("origin")
        if origin is None or not self.origins or self.any_origin:
            return True
        origin = origin.lower()
        return origin in self.origins or (not self.any_host and self._own_page(origin, headers))

    def foreign_page(self, headers: Headers) -> str | None:
        """Why a request that starts or cancels work comes from a page of another site
        (None: it does not), whatever the auth settings: the visitor's browser would
        otherwise lend that page its network position, and a "simple" request (a form,
        an ``<img>``) needs no CORS preflight to be sent."""
        if self.any_origin:
            return None
        origin = headers.get("origin")
        site = headers.get("sec-fetch-site")
        if origin is not None:
            origin = origin.lower()
            if self._page_allowed(origin, site, headers):
                return None
            return f"Origin {origin} is not allowed to start or cancel work here"
        if site is not None:
            if site in ("same-origin", "none"):
                return None
            # A browser's request with no Origin (an <img>, a link): it came from elsewhere.
            return f"a {site} page may not start or cancel work here"
        referer = headers.get("referer")
        if referer is not None:
            # A browser that sends neither Origin nor Sec-Fetch-Site (an old one, or one
            # whose privacy settings strip them, on an <img> or a link) still names the
            # page it was on. A script's request names none, and stays allowed.
            page = _origin_of(referer)
            if not self._page_allowed(page, None, headers):
                return f"a page of {page} (its Referer) may not start or cancel work here"
        return None

    def _page_allowed(self, origin: str, site: str | None, headers: Headers) -> bool:
        """Whether a page of ``origin`` (lowercase) may start or cancel work: a listed
        origin, or the service's own page (which ``site``, where the browser sent it,
        must not contradict)."""
        if origin in self.origins:
            return True
        own = origin != "null" and self._own_page(origin, headers)
        # Where origins are listed, a page's own host counts only on a checked host.
        return own and site in (None, "same-origin") and (not self.origins or not self.any_host)


def _origin_of(url: str) -> str:
    """The origin (``scheme://host[:port]``, lowercase) of a page's URL as a ``Referer``
    header carries it; ``null`` for one that names no host."""
    parts = urlsplit(url.strip())
    # Browsers strip credentials from a Referer; a hand-made one's must not count.
    host = parts.netloc.rpartition("@")[2]
    if not parts.scheme or not host:
        return "null"
    return f"{parts.scheme}://{host}".lower()


class SiteCheck:
    """Refuses, before anything else runs, a request to a host the service does not
    answer to (400, DNS rebinding), and a WebSocket handshake from an origin not allowed
    (403, before any socket is accepted), each with a JSON error body."""

    def __init__(self, app: ASGIApp, sites: Sites) -> None:
        self.app = app
        self.sites = sites

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.sites.host_allowed(headers):
            refusal = (400, "invalid_host", "this service does not answer to that host name")
        elif scope["type"] == "websocket" and not self.sites.may_open_socket(headers):
            refusal = (403, "forbidden_origin", "this origin may not open WebSockets here")
        else:
            await self.app(scope, receive, send)
            return
        await _refuse(scope, send, *refusal)


async def _refuse(scope: Scope, send: Send, status: int, error: str, detail: str) -> None:
    body = orjson.dumps({"error": error, "detail": detail})
    headers = [(b"content-type", b"application/json")]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # A server without the denial-response extension: a policy-violation close.
        await send({"type": "websocket.close", "code": 1008})
