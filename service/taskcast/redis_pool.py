"""The service's one Redis client: on the Redis the served app keeps its records in, or
on the master its Sentinels name.

Either way the pool blocks: a burst of requests (a hundred clients subscribing to one
group at once, say) waits a moment for a connection instead of failing on the 101st. And
a command that fails on a connection error is sent once more, on a new connection: after
a Redis restart every idle pooled connection is dead, and the first command on each
would fail (a 503 here, a hub restart there); after a failover the new connection goes
to the new master.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from taskcast.served import ServedApp

# Redis connections one service process may open (the hub's reads, its pub/sub, REST
# reads and group lookups in flight), and how long a request waits for a free one before
# it is answered 503.
MAX_CONNECTIONS = 100
CONNECTION_WAIT = 5.0


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Connections to the master the Sentinels name, from a pool that blocks when full."""

    async def aclose(self) -> None:
        """Close the master's connections and the clients that asked the Sentinels.

        The pool is the only owner of its ``Sentinel`` (``connect`` keeps no other
        reference), so closing the service's client must close that too, or each
        Sentinel's socket is left for the collector to find open.
        """
        await super().aclose()
        await self.sentinel_manager.aclose()


def connect(served: ServedApp) -> Redis:
    """A client of the served app's Redis (or of its Sentinels' master)."""
    options: dict[str, Any] = {
        "max_connections": MAX_CONNECTIONS,
        "timeout": CONNECTION_WAIT,
        "retry": Retry(NoBackoff(), 1),
    }
    if served.sentinel_master is None:
        return Redis.from_pool(BlockingConnectionPool.from_url(served.redis_url, **options))
    sentinels, master = sentinel_hosts(served.redis_url)
    # (redis-py's Sentinel has no annotations.)
    sentinel = Sentinel(sentinels, sentinel_kwargs=served.sentinel_options)  # type: ignore[no-untyped-call]
    return sentinel.master_for(  # type: ignore[no-any-return]
        served.sentinel_master,
        connection_pool_class=_BlockingSentinelPool,
        **master,
        **options,
    )


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The Sentinels of a URL as Celery writes it (``sentinel://host:26379/0;sentinel://
    :password@host2:26380/0``), and the master's database and credentials it gives."""
    hosts = []
    master: dict[str, Any] = {}
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        hosts.append((parts.hostname or "localhost", parts.port or 26379))
        if parts.path.strip("/"):
            master.setdefault("db", int(parts.path.strip("/")))
        if parts.password:
            master.setdefault("password", unquote(parts.password))
        if parts.username:
            master.setdefault("username", unquote(parts.username))
    return hosts, master
