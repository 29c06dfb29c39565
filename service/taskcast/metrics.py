"""Prometheus metrics of one service process, served at ``GET /metrics``.

Each app has a registry of its own rather than prometheus-client's global one, so
that several apps in one process (the tests run many) never share or clash. What the
hub and its connections already know (open sockets, subscriptions, watched tasks,
frames sent and coalesced) is read from them when scraped: the fan-out's hot path
pays an integer increment per frame and nothing else. The rest are counters and one
histogram touched once per event (a read, a pub/sub message, a dispatch), never once
per subscriber.

Labels take a handful of values each (task names from the catalog, fixed outcomes and
sources): never a task id, a client address or anything a client chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# Where the app's lifespan state holds its Metrics: the server's HTTP protocol
# (taskcast.live.http_transport), which has no request to find the app's state by, counts
# there the connections it refuses and closes.
LIFESPAN_KEY = "taskcast.metrics"
# How a dispatch ended: queued; the broker refused it (503); its parameters were
# refused (400, 413, 422 on POST /tasks/{name}).
DISPATCH_OUTCOMES = ("ok", "publish_failed", "invalid")
# A read of a few keys on a nearby Redis takes well under a millisecond; the upper
# buckets are there for a Redis (or an event loop) in trouble.
_READ_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The counters of one app; ``track`` adds what is read from its hub."""

    def __init__(self, task_names: Iterable[str]) -> None:
        """``task_names``: the exposed tasks (the API's names, which clients know, not
        Celery's) that dispatches are counted by."""
        self.registry = CollectorRegistry()
        registry = self.registry
        self.read_seconds = Histogram(
            "taskcast_hub_read_seconds",
            "Time the hub waited for one read of watched tasks' records (MGET batches), "
            "as its event loop saw it.",
            buckets=_READ_BUCKETS,
            registry=registry,
        )
        self.pubsub_messages = Counter(
            "taskcast_pubsub_messages",
            "Announcements of a stored state the hub received over pub/sub.",
            registry=registry,
        )
        self.slow_clients_closed = Counter(
            "taskcast_slow_clients_closed",
            "Connections closed because the client stopped reading (4408).",
            registry=registry,
        )
        redis_errors = Counter(
            "taskcast_redis_errors",
            "Failed Redis operations: the hub's loop, /readyz, publishing a task, other requests.",
            ["source"],
            registry=registry,
        )
        self.hub_redis_errors = redis_errors.labels("hub")
        self.readyz_redis_errors = redis_errors.labels("readyz")
        self.dispatch_redis_errors = redis_errors.labels("dispatch")
        self.request_redis_errors = redis_errors.labels("request")
        self.dispatches = Counter(
            "taskcast_dispatches",
            "Tasks submitted, by task name and outcome (ok, publish_failed, invalid).",
            ["task", "outcome"],
            registry=registry,
        )
        # Every series exists from the start, at 0, so that rates and alerts on them
        # work before the first failure.
        for name in task_names:
            for outcome in DISPATCH_OUTCOMES:
                self.dispatches.labels(name, outcome)
        limited = Counter(
            "taskcast_limited",
            "Requests refused by a limit: a connection over a cap (per client address, or "
            "the process's in all), a connection waiting for a request closed for a "
            "newcomer at the cap, a request head late or too large, a subscribe over the "
            "rate (rate_limited).",
            ["limit"],
            registry=registry,
        )
        self.foreign_refused = Counter(
            "taskcast_forbidden_origin",
            "Requests to start or cancel work refused because a page of another site sent "
            "them (403 forbidden_origin).",
            registry=registry,
        )
        self.connections_refused = {
            limit: limited.labels(limit)
            for limit in (
                "connections_per_client",
                "connections_total",
                "connections_evicted",
                "header_timeout",
                "header_bytes",
            )
        }
        self.subscribes_refused = limited.labels("subscribe_rate")

    def track(self, read: Callable[[], HubStats]) -> None:
        """Report the hub's live state, as ``read`` returns it, with every scrape."""
        self.registry.register(_HubCollector(read))

    def dispatched(self, name: str, outcome: str, count: int = 1) -> None:
        """Count dispatches of an exposed task: ``count`` of them for a group."""
        self.dispatches.labels(name, outcome).inc(count)


@dataclass(frozen=True, slots=True)
class HubStats:
    """What the hub and its connections know, read when metrics are scraped."""

    connections: int
    # Tasks and groups followed by open connections, counted once per connection.
    subscriptions: int
    watched_tasks: int
    watched_groups: int
    watched_feeds: int
    stalled_tasks: int
    healthy: bool
    frames_sent: int
    frames_coalesced: int


class _HubCollector:
    """Gauges and frame counters computed from the hub's own state when scraped."""

    def __init__(self, read: Callable[[], HubStats]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        stats = self.read()
        yield GaugeMetricFamily(
            "taskcast_ws_connections",
            "Open connections the hub serves: WebSockets and event streams.",
            value=stats.connections,
        )
        yield GaugeMetricFamily(
            "taskcast_ws_subscriptions",
            "Tasks followed by open connections, counted once per connection.",
            value=stats.subscriptions,
        )
        yield GaugeMetricFamily(
            "taskcast_watched_tasks",
            "Distinct tasks the hub reads (each once per change, however many watch it).",
            value=stats.watched_tasks,
        )
        yield GaugeMetricFamily(
            "taskcast_watched_groups",
            "Distinct groups the hub tallies (their members count in watched tasks).",
            value=stats.watched_groups,
        )
        yield GaugeMetricFamily(
            "taskcast_watched_feeds",
            "Distinct owners whose feeds the hub follows (their tasks count in watched tasks).",
            value=stats.watched_feeds,
        )
        yield GaugeMetricFamily(
            "taskcast_stalled_tasks",
            "Watched running tasks whose worker's heartbeat is older than TASKCAST_STALL_AFTER.",
            value=stats.stalled_tasks,
        )
        yield GaugeMetricFamily(
            "taskcast_hub_healthy",
            "1 while the hub reads Redis; 0 during an outage, until it has caught up.",
            value=int(stats.healthy),
        )
        yield CounterMetricFamily(
            "taskcast_frames_sent", "Frames written to WebSocket clients.", value=stats.frames_sent
        )
        yield CounterMetricFamily(
            "taskcast_frames_coalesced",
            "Statuses a slow client skipped: replaced in its mailbox by a newer one.",
            value=stats.frames_coalesced,
        )


async def scrape(request: Request) -> Response:
    # Runs on the event loop on purpose: it reads the hub's state, which only the
    # loop's thread may touch, and costs a few microseconds plus one pass over the
    # connections.
    metrics: Metrics = request.app.state.taskcast.metrics
    return Response(
        generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


routes = [Route("/metrics", scrape, methods=["GET"])]
