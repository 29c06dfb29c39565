"""Webhooks: an owned task's final status POSTed to a URL, signed, delivered at least once.

Which tasks: one published inside ``taskcast.owned_by(owner, webhook="https://...")``, or
whose owner ``TASKCAST_WEBHOOKS`` maps to a URL (when ``owned_by`` named none).

When: the backend's store script writes an owned task's *first* final state (the first
final wins, so this happens once per task) and answers with the task's history entry:
its webhook, owner, name and tags (``taskcast_celery.backend``). The process that wrote
the final (the task's worker, or the service cancelling the task) calls ``task_finished``
then, which queues one Celery task of the app, ``taskcast.webhook`` (``register`` adds it
to the app in ``install``). From there Celery is the engine that retries durably: the
delivery is a message in the broker, acknowledged late and requeued when its worker is
lost, so a restart of the service or of the workers loses nothing. Not covered: a
process that dies between writing the final and queueing the message (one publish).

Each attempt (``deliver``):

1. resolves the URL's host and refuses, for good, a target that is not allowed
   (``check_target``): a host that ``TASKCAST_WEBHOOK_ALLOWED_HOSTS`` does not list may
   only be reached over https, with ``*`` in the list, and only if every address it
   resolves to is public (not loopback, link-local, private, multicast, reserved or
   unspecified): so that a webhook cannot be aimed at the service's own Redis;
2. connects to the very address it checked (no second DNS lookup, which an attacker's
   DNS could answer differently: DNS rebinding), sending the host's name as ``Host`` and
   as TLS's server name, so the certificate is still checked against the name;
3. POSTs the payload (Standard Webhooks: ``{"type": "task.finished", "timestamp": ...,
   "data": {...}}``) signed with ``TASKCAST_WEBHOOK_SECRET``: ``webhook-id`` (the same on
   every attempt: ``msg_<task id>``), ``webhook-timestamp`` (this attempt's) and
   ``webhook-signature`` (computed again for that timestamp); no redirect is followed,
   and the answer's body is never read;
4. a 2xx answer delivers it; anything else (no connection, a timeout, a 3xx, 4xx or 5xx)
   is tried again after an exponential backoff with jitter (``TASKCAST_WEBHOOK_RETRY_FIRST``
   doubling up to ``TASKCAST_WEBHOOK_RETRY_MAX``), until ``TASKCAST_WEBHOOK_RETRY_SECONDS``
   after the first attempt; then it gives up, with an ERROR in the worker's log.

A refused target, or a worker without the secret, is an ERROR at once and is not tried
again: waiting would not change the answer.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import socket
import ssl
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpx
from celery import Celery, Task
from kombu.utils.encoding import bytes_to_str
from pydantic import Field, PositiveFloat, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks.webhooks import Webhook

from taskcast_celery import owners

logger = logging.getLogger(__name__)

# The Celery task that delivers one webhook (``register``).
TASK_NAME = "taskcast.webhook"
# The payload's ``type`` (Standard Webhooks: a dotted name of the event).
EVENT_TYPE = "task.finished"
# Seconds to connect, to send, and to wait for the answer's head, each.
TIMEOUT_SECONDS = 10.0
_DEFAULT_PORTS = {"https": 443, "http": 80}


class WebhookSettings(BaseSettings):
    """What ``register`` (so ``install``) reads from the environment, in every process of
    the app: the workers deliver (secret, allowed hosts, retries); whoever writes a final
    (the workers, and the service when it cancels a task) looks owners up in ``webhooks``."""

    model_config = SettingsConfigDict(env_prefix="TASKCAST_", env_ignore_empty=True)

    # Standard Webhooks' secret, ``whsec_`` and base64: needed by the workers to sign.
    webhook_secret: SecretStr | None = None
    # Comma-separated ``host`` or ``host:port``; ``*``: any public host, over https.
    webhook_allowed_hosts: str = "*"
    # Seconds from the first attempt after which a delivery gives up.
    webhook_retry_seconds: PositiveFloat = 86_400.0
    # The first backoff's seconds, doubled at each attempt up to the last setting's.
    webhook_retry_first: PositiveFloat = 1.0
    webhook_retry_max: PositiveFloat = 600.0
    # An owner's URL, for its tasks whose owned_by gave none (JSON: {"user:42": "https://..."}).
    webhooks: dict[str, str] = Field(default_factory=dict)

    @field_validator("webhooks")
    @classmethod
    def _owners_and_urls(cls, value: dict[str, str]) -> dict[str, str]:
        return {owners.check_owner(o): owners.check_webhook(url) for o, url in value.items()}

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _hosts(cls, value: str) -> str:
        AllowedHosts.parse(value)  # raises ValueError naming the entry
        return value


# What each app was registered with (``register``).
_SETTINGS: weakref.WeakKeyDictionary[Celery, WebhookSettings] = weakref.WeakKeyDictionary()


class Refused(Exception):
    """A target taskcast will not POST to; the message says why."""


@dataclass(frozen=True, slots=True)
class AllowedHosts:
    """``TASKCAST_WEBHOOK_ALLOWED_HOSTS``, parsed."""

    any_public: bool
    # (host, port): port None for any port.
    listed: frozenset[tuple[str, int | None]]

    @classmethod
    def parse(cls, text: str) -> AllowedHosts:
        any_public, listed = False, set()
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                any_public = True
                continue
            parts = urlsplit("//" + entry)
            try:
                port = parts.port
            except ValueError as exc:
                raise ValueError(f"{entry!r}: a port is a number from 0 to 65535") from exc
            if not parts.hostname or parts.path or parts.username is not None:
                raise ValueError(f"{entry!r}: a host name, or host:port ([v6 address]:port)")
            listed.add((parts.hostname.lower(), port))
        return cls(any_public, frozenset(listed))

    def lists(self, host: str, port: int) -> bool:
        host = host.lower()
        return (host, port) in self.listed or (host, None) in self.listed


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt POSTs: the URL's parts and the addresses checked for it."""

    scheme: str
    host: str
    port: int
    # As the URL wrote them: what the Host header says, and what is requested.
    netloc: str
    path: str
    addresses: tuple[str, ...]

    def url_at(self, address: str) -> str:
        """The URL with ``address`` in place of the host name: no lookup is made again."""
        shown = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{shown}:{self.port}{self.path}"


def check_target(url: str, allowed: AllowedHosts) -> Target:
    """The target of ``url`` with the addresses to connect to; ``Refused`` saying why when
    it is not allowed, ``OSError`` when its name does not resolve (try again later)."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in _DEFAULT_PORTS or not host:
        raise Refused("not an https:// (or http://) URL with a host")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    listed = allowed.lists(host, port)
    if not listed:
        if not allowed.any_public:
            raise Refused(f"{host}:{port} is not in TASKCAST_WEBHOOK_ALLOWED_HOSTS")
        if parts.scheme != "https":
            raise Refused(f"http:// only to a host in TASKCAST_WEBHOOK_ALLOWED_HOSTS, not {host}")
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    # getaddrinfo's order is the system's preference; duplicates dropped.
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in found))
    if not listed:
        for address in addresses:
            kind = forbidden_kind(address)
            if kind is not None:
                # Every address, not the first alone: a name with one public and one
                # private address could be connected to the private one.
                article = "an" if kind[0] in "aeiou" else "a"
                named = f"{address} is" if host == address else f"{host} resolves to {address},"
                raise Refused(
                    f"{named} {article} {kind} address, and {host}:{port} is not in "
                    "TASKCAST_WEBHOOK_ALLOWED_HOSTS"
                )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, host, port, parts.netloc, path, addresses)


def forbidden_kind(address: str) -> str | None:
    """What makes ``address`` one a webhook may not reach unless listed, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 reaches 127.0.0.1.
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        # What the lists above miss (100.64.0.0/10, shared by carriers' NATs, say).
        ("non-public", not ip.is_global),
    ):
        if flag:
            return kind
    return None


# -- Queueing (in the process that wrote the final) ----------------------------------------


def register(app: Celery) -> None:
    """Read the webhook settings and add the delivery task to ``app`` (``install``)."""
    settings = WebhookSettings()
    _SETTINGS[app] = settings

    @app.task(
        name=TASK_NAME,
        bind=True,
        # This app's alone: a shared task would join every app finalized after it.
        shared=False,
        # Acknowledged once an attempt is over (delivered, or its retry queued), and
        # requeued if its worker dies meanwhile: a delivery is never lost with a worker.
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=None,
    )
    def deliver_task(
        task: Task[Any, Any],
        webhook_id: str,
        url: str,
        body: str,
        first_attempt: float | None = None,
    ) -> dict[str, Any]:
        return deliver(task, settings, webhook_id, url, body, first_attempt)


def settings_for(app: Celery) -> WebhookSettings:
    """The webhook settings ``app`` was registered with (the environment's if none)."""
    settings = _SETTINGS.get(app)
    return settings if settings is not None else WebhookSettings()


def task_finished(
    app: Celery,
    task_id: str,
    state: str,
    entry: list[Any],
    error: str,
    result: str,
) -> None:
    """An owned task's first final was just written: queue its webhook, if it has one.

    ``entry`` is what the store script answered: its history entry's webhook, owner,
    name and tags (nil for a field it lacks); ``error`` and ``result`` are the JSON the
    entry keeps. Never raises: the final is written whatever becomes of its webhook."""
    try:
        webhook, owner, name, tags = (
            None if value is None else bytes_to_str(value) for value in (*entry, *[None] * 4)[:4]
        )
        url = webhook or (settings_for(app).webhooks.get(owner) if owner else None)
        if not url:
            return
        data = {
            "task_id": task_id,
            "name": name,
            "state": state,
            "owner": owner,
            "tags": json.loads(tags) if tags else [],
            "result": json.loads(result),
            "error": json.loads(error),
        }
        enqueue(app, task_id, url, data)
    except Exception:
        logger.exception(
            "the webhook of %s could not be queued; it is not sent", task_id,
            extra={"task_id": task_id},
        )  # fmt: skip


def webhook_id(task_id: str) -> str:
    """The ``webhook-id`` of a task's webhook: the same on every attempt."""
    return f"msg_{task_id}"


def enqueue(app: Celery, task_id: str, url: str, data: dict[str, Any]) -> None:
    """Publish the delivery of ``data`` (a finished task's) to ``url`` on ``app``'s broker."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = json.dumps({"type": EVENT_TYPE, "timestamp": now, "data": data}, separators=(",", ":"))
    # Outside any ownership: the delivery is nobody's task (no history entry, no feed),
    # even when queued from inside the owned task's own worker.
    token = owners.adopt(None)
    try:
        app.send_task(TASK_NAME, args=[webhook_id(task_id), url, body, None])
    finally:
        owners.release(token)
    logger.info("queued the webhook of %s", task_id, extra={"task_id": task_id})


# -- Delivering (in a worker) ---------------------------------------------------------------


def deliver(
    task: Task[Any, Any],
    settings: WebhookSettings,
    message_id: str,
    url: str,
    body: str,
    first_attempt: float | None,
) -> dict[str, Any]:
    """One attempt to deliver; a failed one queues the next (Celery's retry), or gives up.

    Returns what became of it (the delivery task's result): ``delivered`` and either the
    answer's ``status`` or the ``reason`` it was not sent."""
    now = time.time()
    # Wall-clock seconds: the first attempt may have run in another worker, on another host.
    first = now if first_attempt is None else first_attempt
    attempt = task.request.retries + 1
    if settings.webhook_secret is None:
        logger.error(
            "webhook %s to %s not sent: TASKCAST_WEBHOOK_SECRET is not set on this worker",
            message_id, url,
        )  # fmt: skip
        return {"delivered": False, "reason": "no secret"}
    try:
        signer = Webhook(settings.webhook_secret.get_secret_value())
        target = check_target(url, AllowedHosts.parse(settings.webhook_allowed_hosts))
    except Refused as exc:
        logger.error("webhook %s to %s refused: %s; not sent", message_id, url, exc)
        return {"delivered": False, "reason": str(exc)}
    except (ValueError, TypeError) as exc:  # the secret is not base64
        logger.error(
            "webhook %s to %s not sent: TASKCAST_WEBHOOK_SECRET is not a whsec_ base64 "
            "secret (%s)", message_id, url, exc,
        )  # fmt: skip
        return {"delivered": False, "reason": "bad secret"}
    except OSError as exc:  # the name does not resolve (now)
        failure = f"{urlsplit(url).hostname} does not resolve ({exc})"
    else:
        failed = _post(target, signer, message_id, body)
        if failed is None:
            logger.info("webhook %s to %s delivered (attempt %d)", message_id, url, attempt)
            return {"delivered": True, "attempts": attempt}
        failure = failed
    left = first + settings.webhook_retry_seconds - now
    backoff = min(settings.webhook_retry_max, settings.webhook_retry_first * 2 ** (attempt - 1))
    # Jitter: receivers coming back up are not met by every delivery at the same instant.
    delay = min(backoff * random.uniform(0.5, 1.0), left)
    if delay <= 0:
        logger.error(
            "webhook %s to %s given up after %d attempts in %.0f s: %s",
            message_id, url, attempt, now - first, failure,
        )  # fmt: skip
        return {"delivered": False, "reason": failure, "attempts": attempt}
    logger.warning(
        "webhook %s to %s: attempt %d failed (%s); next in %.2f s",
        message_id, url, attempt, failure, delay,
    )  # fmt: skip
    raise task.retry(args=(message_id, url, body, first), countdown=delay)


def _post(target: Target, signer: Webhook, message_id: str, body: str) -> str | None:
    """POST ``body`` to ``target`` at the first of its addresses that takes a connection;
    None when answered 2xx, else what went wrong."""
    sent_at = datetime.now(UTC)
    headers = {
        "Host": target.netloc,
        "Content-Type": "application/json",
        "User-Agent": "taskcast-webhooks",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signer.sign(message_id, sent_at, body),
    }
    failure = "no address"
    for address in target.addresses:
        # trust_env off: a proxy from the environment would look the name up again (and
        # could reach what the check refused); TLS trust is set here instead.
        with httpx.Client(
            verify=_tls(), trust_env=False, follow_redirects=False, timeout=TIMEOUT_SECONDS
        ) as client:
            try:
                with client.stream(
                    "POST",
                    target.url_at(address),
                    content=body.encode(),
                    headers=headers,
                    # The certificate is checked against the name, not the address.
                    extensions={"sni_hostname": target.host},
                ) as response:
                    # The body is never read: a receiver cannot make a worker hold much.
                    status = response.status_code
                    location = str(response.headers.get("location", ""))[:200]
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = f"no connection to {address}: {exc}"
                continue  # the next address, if any
            except httpx.HTTPError as exc:
                return f"{type(exc).__name__} at {address}: {exc}"
        if 200 <= status < 300:
            return None
        if 300 <= status < 400:
            return f"answered {status}, a redirect to {location!r}, which is not followed"
        return f"answered {status}"
    return failure


_TLS: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """The CAs a webhook's certificate is checked against: the file ``SSL_CERT_FILE`` or
    ``REQUESTS_CA_BUNDLE`` names (as for the process's other HTTPS clients), else certifi's."""
    global _TLS
    if _TLS is None:
        cafile = os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
        _TLS = ssl.create_default_context(cafile=cafile or certifi.where())
    return _TLS
