"""Whether the served app's broker takes connections: the broker's half of ``/readyz``.

The Redis that ``/readyz`` pings holds the records; the broker may be elsewhere
(RabbitMQ, another Redis), and while it is down every dispatch answers 503. So
readiness asks the broker itself, as a producer of the app reaches it: one connection
made with kombu from the app's own settings (its write URL, transport options,
failover URLs), in a thread, with every socket operation bounded by the readiness
timeout, then closed. For RabbitMQ that is a TCP connect and the AMQP handshake (the
credentials and the virtual host checked); for Redis, a connect and a PING.

A probe storm costs the broker at most one connection a second per process: the
verdict is kept for ``fresh_for`` seconds, and callers that come while a check runs
wait for that one. A check that outlasts its caller's timeout (a broker that accepts
TCP and never answers) goes on in its thread and is not started again until it ends,
so at most one thread per process is ever spent on it, never on the event loop. The
thread is the event loop's default executor, not anyio's limiter that dispatch uses:
dispatches stuck on the same dead broker cannot delay the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from celery import Celery
from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

logger = logging.getLogger(__name__)

BrokerState = Literal["ok", "unreachable", "timed out"]


@dataclass(frozen=True, slots=True)
class BrokerVerdict:
    """What one check found: ``state``, and for a broker that is not ok, a sentence
    naming it (its URL without the password) and what failed."""

    state: BrokerState
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def redacted_broker_url(app: Celery) -> str:
    """The URL (each failover URL, ``;``-separated) the app publishes to, password
    masked as kombu masks it (``amqp://guest:**@host:5672//``)."""
    configured = app.conf.broker_write_url or app.conf.broker_url
    if not configured:
        # Celery's default broker, as kombu spells it.
        return str(app.connection_for_write().as_uri())
    # As written rather than as kombu rebuilds it, which shows a password ("**") where
    # the URL has none.
    urls = configured.split(";") if isinstance(configured, str) else list(configured)
    return ";".join(str(maybe_sanitize_url(url.strip())) for url in urls)


class BrokerCheck:
    """Checks the app's broker, at most once per ``fresh_for`` seconds."""

    def __init__(self, app: Celery, fresh_for: float = 1.0) -> None:
        self._app = app
        self.fresh_for = fresh_for
        self.url = redacted_broker_url(app)
        # Options that bound a check's every socket operation, by transport (no I/O here:
        # a transport object is made, no connection).
        self._driver: str = app.connection_for_write().transport.driver_type
        self._verdict: BrokerVerdict | None = None
        self._checked_at = 0.0
        self._running: asyncio.Task[BrokerVerdict] | None = None

    def __repr__(self) -> str:
        return f"<BrokerCheck {self.url} last={self._verdict!r}>"

    # A parameter rather than the caller's asyncio.timeout: the same bound is the check's
    # socket timeout, in a thread that no cancellation reaches.
    async def check(self, timeout: float) -> BrokerVerdict:  # noqa: ASYNC109
        """The broker's state, waiting ``timeout`` seconds at most."""
        verdict = self._verdict
        if verdict is not None and time.monotonic() - self._checked_at < self.fresh_for:
            return verdict
        if self._running is None:
            self._running = asyncio.create_task(self._check(timeout), name="taskcast-broker-check")
        try:
            async with asyncio.timeout(timeout):
                # Shielded: a caller that gives up leaves the check to finish for the next.
                return await asyncio.shield(self._running)
        except TimeoutError:
            return BrokerVerdict(
                "timed out", f"the broker ({self.url}) did not answer within {timeout:g} s"
            )

    async def _check(self, timeout: float) -> BrokerVerdict:  # noqa: ASYNC109
        try:
            verdict = await asyncio.to_thread(self._connect, timeout)
        finally:
            self._running = None
        previous, self._verdict = self._verdict, verdict
        self._checked_at = time.monotonic()
        # Said when it changes, not at every probe: a probe a second would flood the log.
        if not verdict.ok and (previous is None or previous.ok):
            logger.warning("readiness: %s", verdict.detail)
        elif verdict.ok and previous is not None and not previous.ok:
            logger.info("readiness: the broker (%s) answers again", self.url)
        return verdict

    def _connect(self, timeout: float) -> BrokerVerdict:
        """One connection, made and closed in this (worker) thread."""
        connection: Connection | None = None
        try:
            connection = self._app.connection_for_write(
                connect_timeout=timeout,
                heartbeat=0,
                transport_options=_bounded(self._driver, timeout),
            )
            # Each failover URL once, with no sleep between them (kombu sleeps only after
            # a whole round of them has failed, and there is no second round).
            connection.ensure_connection(max_retries=max(len(connection.alt), 1) - 1)
        except Exception as exc:
            # kombu wraps the transport's error (OperationalError): the cause says more.
            cause = type(exc.__cause__ or exc).__name__
            return BrokerVerdict("unreachable", f"the broker ({self.url}) is unreachable: {cause}")
        finally:
            # A close that fails (the broker went away meanwhile) changes no verdict.
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
        return BrokerVerdict("ok")


def _bounded(driver: str, timeout: float) -> dict[str, Any]:
    """Transport options that bound every socket operation of a check by ``timeout``,
    beyond the connect that ``connect_timeout`` bounds (a broker that accepts and then
    never answers): kombu's Redis transport ignores ``connect_timeout`` and reads its
    own; py-amqp waits for each frame of the handshake ``connect_timeout``, but reads
    and writes after it (closing the connection) without one."""
    if driver == "redis":
        return {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if driver == "amqp":
        return {"read_timeout": timeout, "write_timeout": timeout}
    return {}
