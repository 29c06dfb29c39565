"""The hub: one coroutine per process that watches tasks and fans out their changes.

It knows which task ids have subscribers, reads their result-backend keys in batches
(MGET, one round trip per 1,000 keys, however many clients watch each task), compares
the raw bytes with the last ones seen, and only then decodes and encodes, once per
change, handing the frame to every subscriber (see ``service.subscriber``: written at
once to a socket with room, else kept in that connection's mailbox; never awaited).
Seeing every change of a task, it also measures its pace (``service.eta``) and puts
the rate and time left into that one frame.

Push: Celery's Redis backend PUBLISHes every stored state on the key's own channel.
The hub SUBSCRIBEs to the channels of watched tasks, and a message is a hint that the
task changed: the hub re-reads the key rather than trusting the payload, because the
pub/sub connection and the reading connection are not ordered with each other; all
reads happen in one coroutine, so a subscriber can never see a state older than one
it already has. The poll is the safety net for anything push misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from service.eta import EtaEstimator
from service.metrics import Metrics
from service.protocol import status_message, unknown_task_message
from service.status import decode_status
from service.store import ResultStore
from service.subscriber import Kind, Subscriber

logger = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0
# How long the hub waits for Redis to confirm a SUBSCRIBE before reading anyway (the
# poll would catch up on anything missed).
_SUBSCRIBE_CONFIRM_TIMEOUT = 1.0


@dataclass(slots=True, eq=False)
class _Watch:
    """One watched task: its subscribers, the last record seen, and its pace so far."""

    # A dict as an ordered set: a change reaches subscribers in the order they came.
    subscribers: dict[Subscriber, None] = field(default_factory=dict)
    loaded: bool = False
    raw: bytes | None = None
    frame: str | None = None
    kind: Kind = Kind.STATUS
    eta: EtaEstimator = field(default_factory=EtaEstimator)


class Hub:
    """Watches the tasks that have subscribers and hands their changes out."""

    def __init__(
        self,
        store: ResultStore,
        *,
        metrics: Metrics,
        poll_interval: float = 0.5,
        push: bool = True,
        slow_client_timeout: float = 30.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.push = push
        self.slow_client_timeout = slow_client_timeout
        self.healthy = True
        # Every connection's mailbox, with its sender (cancelled if the client stalls).
        self.connections: dict[Subscriber, asyncio.Task[object]] = {}
        # The connections whose send is waiting on the client (kept by the subscribers).
        self.stalled: set[Subscriber] = set()
        self._watches: dict[str, _Watch] = {}
        self._to_read: set[str] = set()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._wake = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._listener: asyncio.Task[None] | None = None
        # Frames sent and coalesced by connections already closed (open ones keep their own).
        self._frames_sent = 0
        self._frames_coalesced = 0

    # -- called by the WebSocket endpoints (synchronous: no await between check and act)

    @property
    def watched(self) -> frozenset[str]:
        """The task ids the hub is reading (for tests and metrics)."""
        return frozenset(self._watches)

    @property
    def watched_count(self) -> int:
        return len(self._watches)

    def frame_counts(self) -> tuple[int, int]:
        """Frames sent, and frames coalesced, by every connection so far (for metrics)."""
        sent, coalesced = self._frames_sent, self._frames_coalesced
        for subscriber in self.connections:
            sent += subscriber.frames_sent
            coalesced += subscriber.frames_coalesced
        return sent, coalesced

    def connect(self, subscriber: Subscriber, sender: asyncio.Task[object]) -> None:
        """Register a connection; ``sender`` is cancelled if the client stops reading."""
        self.connections[subscriber] = sender

    def disconnect(self, subscriber: Subscriber) -> None:
        """Forget a connection and every subscription it held."""
        for task_id in list(subscriber.tasks):
            self.unwatch(task_id, subscriber)
        if self.connections.pop(subscriber, None) is not None:
            # Its counts outlive it here, so the totals never go down.
            self._frames_sent += subscriber.frames_sent
            self._frames_coalesced += subscriber.frames_coalesced
        self.stalled.discard(subscriber)

    def watch(self, task_id: str, subscriber: Subscriber) -> None:
        """Subscribe; the current status reaches the mailbox now (if known) or after one read."""
        watch = self._watches.get(task_id)
        if watch is None:
            watch = self._watches[task_id] = _Watch()
            self._to_read.add(task_id)
            if self.push:
                self._to_unsubscribe.discard(task_id)
                self._to_subscribe.add(task_id)
            self._wake.set()
        watch.subscribers[subscriber] = None
        subscriber.tasks.add(task_id)
        if watch.frame is not None:
            subscriber.offer(task_id, watch.frame, watch.kind)

    def unwatch(self, task_id: str, subscriber: Subscriber) -> None:
        subscriber.tasks.discard(task_id)
        watch = self._watches.get(task_id)
        if watch is None:
            return
        watch.subscribers.pop(subscriber, None)
        if not watch.subscribers:
            self._forget(task_id)

    # -- the loop

    async def run(self) -> None:
        """Run until cancelled; a crash is logged and the loop starts again."""
        backoff = _BACKOFF_FIRST
        while True:
            try:
                await self._serve(recovering=not self.healthy)
            except asyncio.CancelledError:
                raise
            except (aioredis.RedisError, OSError) as exc:
                self.metrics.hub_redis_errors.inc()
                if self.healthy:
                    logger.warning("hub lost Redis (%r); retrying with backoff", exc)
            except Exception:
                logger.exception("hub loop crashed; restarting")
            if self.healthy:
                backoff = _BACKOFF_FIRST  # it had recovered: start the backoff over
            self.healthy = False
            await self._close_pubsub()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def close(self) -> None:
        await self._close_pubsub()

    async def _serve(self, recovering: bool) -> None:
        loop = asyncio.get_running_loop()
        if recovering:
            await self.store.redis.ping()
            logger.info("hub reconnected to Redis")
        # On start and after an outage, every watched task is subscribed and read again,
        # so nobody misses a state (a final one above all) written in between.
        if self.push:
            self._to_subscribe |= set(self._watches)
            self._to_unsubscribe.clear()
        self._to_read |= set(self._watches)
        self.healthy = True
        next_poll = loop.time() + self.poll_interval
        next_reap = loop.time() + self._reap_interval
        while True:
            self._raise_if_listener_failed()
            await self._sync_channels()
            now = loop.time()
            if now >= next_poll:
                if self._watches:
                    self._to_read |= set(self._watches)
                # Drift-corrected, but never a burst of catch-up polls after a stall.
                next_poll = max(next_poll + self.poll_interval, now)
            if now >= next_reap:
                self._reap_slow_clients(now)
                next_reap = now + self._reap_interval
            if self._to_read:
                ids = [task_id for task_id in self._to_read if task_id in self._watches]
                self._to_read.clear()
                if ids:
                    started = loop.time()
                    raws = await self.store.read_many(ids)
                    self.metrics.read_seconds.observe(loop.time() - started)
                    # The read time stands for the write time: records carry no time of
                    # their own, and with push the read follows the write within ms.
                    self._apply_all(ids, raws, loop.time())
                continue
            self._wake.clear()
            # Nothing watched and nobody connected: sleep until something happens.
            deadlines = [next_poll] if self._watches else []
            if self.connections:
                deadlines.append(next_reap)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(deadlines) if deadlines else None):
                    await self._wake.wait()

    @property
    def _reap_interval(self) -> float:
        return min(1.0, self.slow_client_timeout / 4)

    def _apply_all(self, ids: list[str], raws: Iterable[bytes | None], now: float) -> None:
        for task_id, raw in zip(ids, raws, strict=True):
            watch = self._watches.get(task_id)
            if watch is None or (watch.loaded and raw == watch.raw):
                continue  # unwatched meanwhile, or unchanged: nothing decoded, nothing sent
            if raw is None and watch.loaded:
                # The record vanished under a task we had seen (a Redis restart without
                # persistence, a failover): keep watching for the worker's next write.
                continue
            watch.loaded, watch.raw = True, raw
            if raw is None:
                watch.frame, watch.kind = unknown_task_message(task_id), Kind.UNKNOWN
            else:
                status = decode_status(task_id, raw)
                if status["progress"] is not None and not status["final"]:
                    # Once per change, however many subscribers: part of the one frame.
                    watch.eta.annotate(status["progress"], now)
                watch.frame = status_message(status)
                watch.kind = Kind.FINAL if status["final"] else Kind.STATUS
            frame, kind = watch.frame, watch.kind
            for subscriber in watch.subscribers:
                subscriber.offer(task_id, frame, kind)
            if kind.terminal:
                # Handed out to everyone watching: the subscription is over.
                self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        del self._watches[task_id]
        self._to_read.discard(task_id)
        if self.push:
            self._to_subscribe.discard(task_id)
            self._to_unsubscribe.add(task_id)
            self._wake.set()

    # -- push

    async def _sync_channels(self) -> None:
        if not self.push or not (self._to_subscribe or self._to_unsubscribe):
            return
        pubsub = await self._ensure_pubsub()
        if self._to_unsubscribe:
            gone = [self.store.key(task_id) for task_id in self._to_unsubscribe]
            self._to_unsubscribe.clear()
            await pubsub.unsubscribe(*gone)
        if self._to_subscribe:
            channels = [self.store.key(task_id).encode() for task_id in self._to_subscribe]
            self._to_subscribe.clear()
            loop = asyncio.get_running_loop()
            waiting = [self._confirmations.setdefault(ch, loop.create_future()) for ch in channels]
            await pubsub.subscribe(*channels)
            if self._listener is None:
                # Started after the first SUBSCRIBE: before it there is no connection to read.
                self._listener = asyncio.create_task(self._listen(pubsub), name="hub-pubsub")
                self._listener.add_done_callback(lambda _: self._wake.set())
            # Subscribe first, then read: a change between the two is not lost.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SUBSCRIBE_CONFIRM_TIMEOUT):
                    await asyncio.gather(*waiting)
            for channel in channels:
                self._confirmations.pop(channel, None)
            self._raise_if_listener_failed()

    async def _ensure_pubsub(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self.store.redis.pubsub()
        return self._pubsub

    async def _listen(self, pubsub: PubSub) -> None:
        prefix = len(self.store.key(""))
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "message":
                self.metrics.pubsub_messages.inc()
                self._to_read.add(channel[prefix:].decode())
                self._wake.set()
            elif kind == "subscribe":
                waiter = self._confirmations.get(channel)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    def _raise_if_listener_failed(self) -> None:
        listener = self._listener
        if listener is not None and listener.done() and not listener.cancelled():
            exc = listener.exception()
            if exc is not None:
                raise exc

    async def _close_pubsub(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        for waiter in self._confirmations.values():
            waiter.cancel()
        self._confirmations.clear()

    # -- slow clients

    def _reap_slow_clients(self, now: float) -> None:
        limit = self.slow_client_timeout
        for subscriber in list(self.stalled):
            since, sender = subscriber.sending_since, self.connections.get(subscriber)
            if since is not None and now - since > limit and sender and not sender.done():
                logger.info("closing a client that stopped reading for %.0f s", now - since)
                sender.cancel(msg="slow client")
                self.metrics.slow_clients_closed.inc()
