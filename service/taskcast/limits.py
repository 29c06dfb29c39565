"""Limits that keep one client from hurting the others: connections the hub serves
(WebSockets and event streams) per address and in all, subscribes per second, and
in-request jobs (``GET /sync-process/``).

All are kept in the process, like everything a connection owns: N service processes
allow N times as much in all (docs/operations.md).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio

# In-request jobs one service process runs at once (GET /sync-process/).
SYNC_JOBS = 2


class LimitReached(Exception):
    """Refused at once, because a limit is reached; the message says which."""


class InRequestJobs:
    """Runs at most ``limit`` in-request jobs at once, on threads of their own (never
    the ones dispatch needs); one more is refused at once rather than queued."""

    def __init__(self, limit: int = SYNC_JOBS) -> None:
        self.limit = limit
        self.running = 0
        # Never waited on: ``running`` keeps to the limit before a thread is asked for.
        self._threads = anyio.CapacityLimiter(limit)

    async def run(self, job: Callable[[], Any]) -> Any:
        # No await between the check and the count: two requests cannot both pass.
        if self.running >= self.limit:
            raise LimitReached(f"at most {self.limit} in-request jobs run at a time")
        self.running += 1
        try:
            return await anyio.to_thread.run_sync(job, limiter=self._threads)
        finally:
            self.running -= 1


class Refusal(NamedTuple):
    """Why a limit refused something: the limit's name (a metric label), and in words."""

    limit: str
    detail: str


class ClientConnections:
    """Open WebSocket connections and event streams: by client address, capped at
    ``per_client``, and in all, capped at ``total`` (0: no cap).

    Why both, and why the per-address cap is off by default: phones behind a carrier's
    NAT, an office behind one gateway, clients behind a proxy that forwards no address
    all share one address, so any per-address number refuses a real crowd some day (100
    refused 200 of 300 clients following one task). What one client could exhaust is the
    process's file descriptors: ``total`` keeps that from happening, whoever connects,
    and every connection's own limits (subscriptions, subscribe rate, frame size, slow
    readers) keep each one cheap. Under ``taskcast serve`` the server's HTTP protocol
    counts every connection against the same number from its accept
    (``taskcast.live.http_transport``); this count is what holds where the app is served
    otherwise.
    """

    def __init__(self, per_client: int, total: int = 0) -> None:
        self.per_client = per_client
        self.total = total
        self.count = 0
        # Only addresses with a connection open: the dict never outgrows the sockets.
        self.open: dict[str, int] = {}

    def acquire(self, client: str) -> Refusal | None:
        """Count a new connection from ``client``; or, counting nothing, why not."""
        if self.total and self.count >= self.total:
            detail = f"this server already has {self.total} connections open; retry later"
            return Refusal("connections_total", detail)
        count = self.open.get(client, 0)
        if self.per_client and count >= self.per_client:
            detail = f"this address already has {self.per_client} connections open; retry later"
            return Refusal("connections_per_client", detail)
        self.open[client] = count + 1
        self.count += 1
        return None

    def release(self, client: str) -> None:
        """Forget a connection that ``acquire`` counted."""
        self.count -= 1
        count = self.open[client] - 1
        if count:
            self.open[client] = count
        else:
            del self.open[client]


def default_max_connections(reserve: int = 256) -> int:
    """Connections one process can hold: its open-file limit, less what it keeps for
    everything else (Redis, logs, HTTP requests); 0 (no cap) where there is no limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(soft - reserve, reserve)


class TokenBucket:
    """``rate`` operations a second on average, in bursts of up to ``burst`` (rate 0: no limit).

    Time is passed in (the event loop's clock) rather than read here, so that the
    arithmetic is testable without waiting.
    """

    __slots__ = ("_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; a refused operation spends nothing."""
        if self.rate <= 0:
            return True
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
