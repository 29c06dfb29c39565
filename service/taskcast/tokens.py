"""Watch tokens: what opens one task (or group) for reading when the service has a secret.

A token is ``v1.<expires_at>.<MAC>``: an HMAC-SHA256, keyed with ``TASKCAST_SECRET``, of
the version, the expiry and the id it opens. It names neither the id nor anything else,
and opens nothing but that id until it expires. Standard library only: the web app of
your own that starts tasks can mint tokens with ``taskcast.sign_watch_token`` without
running, or installing the server side of, taskcast.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

# The owners' rule where it is written once (a module of the standard library only, too).
from taskcast_celery.owners import OWNER_PATTERN, OWNER_RULE

# A shorter secret is refused: a guessable one protects nothing.
MIN_SECRET_CHARS = 32

# The token format's version, first in every token, so the format can change later
# without an old token being read the new way.
TOKEN_VERSION = "v1"
# Far above any real token (``v1.<10 digits>.<43 characters>``): bounds the work spent on junk.
_MAX_TOKEN_CHARS = 128


def _mac(secret: bytes, signed: str) -> str:
    digest = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(secret: bytes, task_id: str, expires_at: int) -> str:
    """A watch token for ``task_id`` until ``expires_at`` (Unix seconds):
    ``v1.<expires_at>.<MAC>``. The id is bound by the MAC, not carried: a token says
    nothing of the task it opens, and is useless for any other."""
    payload = f"{TOKEN_VERSION}.{expires_at}"
    return f"{payload}.{_mac(secret, f'{payload}.{task_id}')}"


def verify(
    secret: bytes, token: str, task_id: str, now: float, max_ttl: float | None = None
) -> bool:
    """Whether ``token`` was signed with ``secret`` for ``task_id`` and is unexpired; with
    ``max_ttl``, also whether it expires within that many seconds of ``now`` (a token
    minted to last longer than the service allows is refused, however it was made)."""
    if len(token) > _MAX_TOKEN_CHARS:
        return False
    version, _, rest = token.partition(".")
    expires, _, mac = rest.partition(".")
    if version != TOKEN_VERSION or not (expires.isascii() and expires.isdigit()):
        return False
    # The MAC covers the expiry exactly as written, so "0123" is not a second spelling
    # of "123"; and the text is compared, not its decoding, for the same reason.
    expected = _mac(secret, f"{version}.{expires}.{task_id}")
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return False
    return now < int(expires) and (max_ttl is None or int(expires) <= now + max_ttl)


# Ids are UUIDs in lower case, as the service keeps them: a token is bound to that form.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# An hour: the service refuses a token that lasts longer than its TASKCAST_TOKEN_TTL
# (by default its app's result_expires, an hour in many projects), so a longer default
# here would mint tokens that some services refuse.
DEFAULT_TTL = 3600


def sign_watch_token(task_id: str, *, secret: str, ttl: int | None = None) -> str:
    """A watch token for ``task_id`` (or a group id), as the service would mint it.

    ``secret`` is the service's ``TASKCAST_SECRET``; the token is valid for ``ttl``
    seconds (default: an hour), and no longer than the service's ``TASKCAST_TOKEN_TTL``
    allows: a token that expires later than that from when it is shown is refused. Give it to
    whoever should follow the task: the service's REST and WebSocket routes take it
    (``?token=`` or ``Authorization: Bearer``), as they take the ones it returns itself.
    """
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"secret: the service needs at least {MIN_SECRET_CHARS} characters")
    canonical = task_id.lower()
    if not _UUID.fullmatch(canonical):
        raise ValueError(f"task_id must be a UUID, got {task_id!r}")
    lifetime = DEFAULT_TTL if ttl is None else ttl
    if lifetime <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return sign(secret.encode(), canonical, int(time.time()) + lifetime)


# What a feed token is bound to: the owner under this prefix, so that it is never a
# task's token (ids are UUIDs), and binds the owner exactly ("user:4" opens nothing of
# "user:42").
FEED_PREFIX = "feed:"


def sign_feed_token(owner: str, *, secret: str, ttl: int | None = None) -> str:
    """A feed token for ``owner``: it lists and follows that owner's tasks
    (``GET /feeds/{owner}/tasks``, ``/ws``'s ``{"op": "subscribe", "feed": owner}``,
    ``/sse/feeds/{owner}``) and nothing else; your web app hands it to its user's
    browser. ``secret`` and ``ttl`` as for ``sign_watch_token`` (an hour by default, and
    never longer than the service's ``TASKCAST_TOKEN_TTL``)."""
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"secret: the service needs at least {MIN_SECRET_CHARS} characters")
    if not re.fullmatch(OWNER_PATTERN, owner):
        raise ValueError(f"owner must be {OWNER_RULE}, got {owner!r}")
    lifetime = DEFAULT_TTL if ttl is None else ttl
    if lifetime <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return sign(secret.encode(), FEED_PREFIX + owner, int(time.time()) + lifetime)
