"""Whose tasks: ``taskcast.owned_by(owner, tags=..., webhook=...)`` around a dispatch.

Inside the block, every task the code publishes (``.delay()``, ``apply_async``, groups,
chords) carries its owner, its tags and its webhook in its message's headers, and its
SENT record carries the owner and tags (``taskcast_celery.install``). A worker running
such a task runs it inside the same ownership, so what the task publishes in turn (a
chain's next step, a chord's callback) belongs to the same owner; and every state its
worker stores carries them too (``taskcast_celery.backend``).

Owners and tags are opaque to taskcast: ``user:42``, ``team-7``, ``tenant:acme.user:9``
are all fine. They are checked, since they become Redis key names and URL paths: at most
128 characters (tags 64), letters, digits and ``_.:@-`` only.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_OWNER_CHARS = 128
MAX_TAG_CHARS = 64
MAX_TAGS = 16
MAX_WEBHOOK_CHARS = 2048
# No "/": an owner is a path segment (/feeds/{owner}/tasks).
OWNER_PATTERN = rf"^[A-Za-z0-9_.:@-]{{1,{MAX_OWNER_CHARS}}}$"
OWNER_RULE = f"1 to {MAX_OWNER_CHARS} characters of letters, digits and _.:@-"
_OWNER = re.compile(OWNER_PATTERN)
TAG_PATTERN = rf"^[A-Za-z0-9_.:@-]{{1,{MAX_TAG_CHARS}}}$"
_TAG = re.compile(TAG_PATTERN)

# The message headers that carry them (custom headers reach the worker's task.request).
OWNER_HEADER = "taskcast_owner"
TAGS_HEADER = "taskcast_tags"
WEBHOOK_HEADER = "taskcast_webhook"


class OwnerError(ValueError):
    """An owner, tag or webhook URL that taskcast cannot take; the message says why."""


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who owns the tasks published in an ``owned_by`` block, and what to tell whom."""

    owner: str
    tags: tuple[str, ...] = ()
    webhook: str | None = None

    def headers(self) -> dict[str, Any]:
        """The message headers that carry it to the worker."""
        headers: dict[str, Any] = {OWNER_HEADER: self.owner, TAGS_HEADER: list(self.tags)}
        if self.webhook is not None:
            headers[WEBHOOK_HEADER] = self.webhook
        return headers


_CURRENT: ContextVar[Ownership | None] = ContextVar("taskcast_ownership", default=None)


def check_owner(owner: object) -> str:
    """``owner`` if taskcast can take it, else ``OwnerError`` saying why."""
    if not isinstance(owner, str) or not _OWNER.fullmatch(owner):
        raise OwnerError(f"an owner is {OWNER_RULE}, got {owner!r:.80}")
    return owner


def check_tags(tags: Iterable[object]) -> tuple[str, ...]:
    """``tags`` as a tuple without repeats, if taskcast can take them."""
    if isinstance(tags, str):
        raise OwnerError("tags is a list of tags, not one string")
    checked: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise OwnerError(
                f"a tag is 1 to {MAX_TAG_CHARS} characters of letters, digits and _.:@-, "
                f"got {tag!r:.80}"
            )
        checked[tag] = None
    if len(checked) > MAX_TAGS:
        raise OwnerError(f"at most {MAX_TAGS} tags, got {len(checked)}")
    return tuple(checked)


def check_webhook(url: object) -> str:
    """A webhook URL's form (http or https, a host, no credentials); where it may point
    is checked when it is delivered (``taskcast_celery.webhooks``)."""
    if not isinstance(url, str) or len(url) > MAX_WEBHOOK_CHARS:
        raise OwnerError(f"a webhook is a URL of at most {MAX_WEBHOOK_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise OwnerError(f"a webhook is an https:// (or http://) URL with a host, got {url!r:.80}")
    if parts.username is not None or parts.password is not None:
        raise OwnerError("a webhook URL carries no credentials: it is signed instead")
    return url


@contextlib.contextmanager
def owned_by(
    owner: str, *, tags: Iterable[str] = (), webhook: str | None = None
) -> Iterator[Ownership]:
    """Every task published inside the block belongs to ``owner``, with ``tags``; its
    final status is POSTed to ``webhook`` (signed; see docs/security.md) when given.

    Works around ``.delay()``, ``apply_async``, groups and chords, in a web view, a
    script or a task (nested blocks: the innermost wins); raises ``OwnerError`` for an
    owner, tag or URL it cannot take."""
    ownership = Ownership(
        check_owner(owner),
        check_tags(tags),
        None if webhook is None else check_webhook(webhook),
    )
    token = _CURRENT.set(ownership)
    try:
        yield ownership
    finally:
        _CURRENT.reset(token)


def current() -> Ownership | None:
    """The ownership of the innermost ``owned_by`` block running, if any."""
    return _CURRENT.get()


def from_request(request: Any) -> Ownership | None:
    """A running task's ownership, from the headers its message carried (None: it has no
    owner, or they do not check out)."""
    owner = getattr(request, OWNER_HEADER, None)
    if owner is None:
        return None
    try:
        webhook = getattr(request, WEBHOOK_HEADER, None)
        return Ownership(
            check_owner(owner),
            check_tags(getattr(request, TAGS_HEADER, None) or ()),
            None if webhook is None else check_webhook(webhook),
        )
    except OwnerError:
        return None


def adopt(ownership: Ownership | None) -> Token[Ownership | None]:
    """Run what follows (a task, from its ``task_prerun``) inside ``ownership``, so that
    what it publishes is owned the same; ``release`` the token after (``task_postrun``)."""
    return _CURRENT.set(ownership)


def release(token: Token[Ownership | None]) -> None:
    """End what ``adopt`` began."""
    _CURRENT.reset(token)
