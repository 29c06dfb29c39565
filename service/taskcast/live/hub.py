"""The hub: one coroutine per process that watches tasks and fans out their changes.

It knows which task ids have subscribers, reads their result-backend keys in batches
(MGET, one round trip per 1,000 keys, however many clients watch each task), compares
the raw bytes with the last ones seen, and only then decodes and encodes, once per
change, delivering one typed update (``taskcast.live.protocol.Update``: what it is
about, its kind, its status, its text) to every subscriber (see
``taskcast.live.subscriber``: written at once to a socket with room, else kept in that
connection's mailbox; never awaited). Seeing every change of a task, it also measures
its pace (``taskcast.live.eta``) and puts the rate and time left into that one update.

Liveness: on each poll the hub also reads the heartbeats of the running tasks it
watches (in the same MGET as their records), measures their age on Redis's clock (read
with TIME every 10 seconds, ``taskcast.store.RedisClock``), and flips
a task's ``stalled`` flag when its worker has been silent for ``stall_after`` seconds
(``taskcast.liveness``); a new record from the task is itself a sign of life and clears
it.

Groups: a watched group is a tally (``taskcast.groups``) fed by its members, which the
hub watches like any task (their keys join the same MGET and the same channels), with
the group as their listener. A group's update goes out at most every 100 ms, however
many members changed meanwhile (its final one at once).

Feeds: a watched owner's feed follows that owner's unfinished tasks (read from the
owner's set of them, the newest ``FEED_MAX_TASKS``), which the hub watches like any task,
with the feed as their listener; a new task of the owner is announced on the owner's
channel as its SENT record is written (``taskcast_celery.backend``), and the hub follows
it from there. A new subscriber is first answered with one ``feed`` message holding the
current status of each (and, when it resumes, the finals of the tasks that ended since),
then gets every status of every task of the owner. The owner's set is read again every
``_FEED_POLL_INTERVAL`` seconds and after an outage: the safety net for a missed
announcement.

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
import math
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from taskcast.groups import GroupTally
from taskcast.live.eta import Countdown, EtaEstimator
from taskcast.live.protocol import (
    Kind,
    Update,
    feed_key,
    feed_owner,
    feed_snapshot,
    group_update,
    status_update,
    unknown_task,
)
from taskcast.live.subscriber import Subscriber
from taskcast.liveness import can_stall, is_stalled, silent
from taskcast.metrics import HubStats, Metrics
from taskcast.status import Status, decode_status
from taskcast.store import Reading, ResultStore

logger = logging.getLogger(__name__)

# Between attempts to reach Redis again: doubling from 50 ms to 1 s. An attempt is one
# PING, so a short cap costs Redis nothing, and a failover (2 to 3 s) is over within a
# second of the new master taking writes.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
# How long the hub waits for Redis to confirm a SUBSCRIBE before reading anyway (the
# poll would catch up on anything missed).
_SUBSCRIBE_CONFIRM_TIMEOUT = 1.0
# A group's status goes out at most this often (its final one at once): a group of a
# thousand members reporting every second would otherwise send each follower a thousand
# frames a second, where ten say as much.
_GROUP_FRAME_INTERVAL = 0.1
# The most unfinished tasks of one owner a feed follows (the newest), and how often the
# hub reads each followed owner's unfinished tasks again, for announcements it missed.
FEED_MAX_TASKS = 1000
_FEED_POLL_INTERVAL = 5.0
# A resumed feed replays the finals of the tasks that ended this long before the time it
# resumes from: a final may have waited in a slow client's mailbox behind a newer
# update (or Redis's clock differ a little from the hub's count of it).
FEED_REPLAY_MARGIN_MS = 5_000


@dataclass(slots=True, eq=False)
class _Watch:
    """One watched task: its subscribers, the last record seen, and its pace so far."""

    # A dict as an ordered set: a change reaches subscribers in the order they came.
    subscribers: dict[Subscriber, None] = field(default_factory=dict)
    loaded: bool = False
    raw: bytes | None = None
    # The last update made of it, for a new subscriber (None: nothing to tell yet).
    update: Update | None = None
    eta: EtaEstimator = field(default_factory=EtaEstimator)
    # Running by its record (so its heartbeat is read on each poll), and stalled by it.
    running: bool = False
    stalled: bool = False
    # The watched groups this task is a member of (None for most tasks: no list kept).
    groups: list[_GroupWatch] | None = None
    # The watched feed (its owner's) that follows it, if any.
    feed: _FeedWatch | None = None
    # Loop time since its record has been missing, after the hub had read one (a Redis
    # restart without persistence, a failover, a record deleted); None while it exists.
    vanished_at: float | None = None


@dataclass(slots=True, eq=False)
class _GroupWatch:
    """One watched group: its subscribers, its tally, and the last update made of it."""

    tally: GroupTally
    members: tuple[str, ...]
    subscribers: dict[Subscriber, None] = field(default_factory=dict)
    update: Update | None = None
    eta: EtaEstimator = field(default_factory=EtaEstimator)
    countdown: Countdown = field(default_factory=Countdown)
    # Loop time of its last update, for the group update interval.
    sent_at: float = -math.inf


@dataclass(slots=True, eq=False)
class _FeedWatch:
    """One watched owner: the subscribers of its feed, and its unfinished tasks followed."""

    owner: str
    subscribers: dict[Subscriber, None] = field(default_factory=dict)
    # New subscribers waiting for their first answer, with the time (Redis's clock, ms)
    # from which they resume (None: a first subscription, no finals to replay).
    waiting: dict[Subscriber, int | None] = field(default_factory=dict)
    # The owner's unfinished tasks, as read and announced (a dict as an ordered set).
    tasks: dict[str, None] = field(default_factory=dict)
    loaded: bool = False
    # Tasks of its set that ended, or turned out unknown (a record that expired without a
    # final), while the set still holds them: not followed again each time it is read.
    gone: set[str] = field(default_factory=set)


class Hub:
    """Watches the tasks that have subscribers and delivers their changes."""

    def __init__(
        self,
        store: ResultStore,
        *,
        metrics: Metrics,
        poll_interval: float = 0.5,
        push: bool = True,
        slow_client_timeout: float = 30.0,
        stall_after: float = 0.0,
        stall_grace: float = 0.0,
        vanish_grace: float = 30.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.push = push
        self.slow_client_timeout = slow_client_timeout
        # Seconds of heartbeat silence that make a running task stalled (0: off), and how
        # long after reconnecting to Redis the hub waits before calling any task stalled:
        # beats missed during the outage are the outage's, not the workers'.
        self.stall_after = stall_after
        self.stall_grace = stall_grace
        # How long a record that vanished may stay missing, with no heartbeat from its
        # worker meanwhile, before its subscribers are told the task is unknown.
        self.vanish_grace = vanish_grace
        self._judge_stalls_from = 0.0
        self.healthy = True
        # Every connection's mailbox, with its sender (cancelled if the client stops reading).
        self.connections: dict[Subscriber, asyncio.Task[object]] = {}
        # The connections whose send is waiting on the client (kept by the subscribers).
        self.backed_up: set[Subscriber] = set()
        self._watches: dict[str, _Watch] = {}
        self._groups: dict[str, _GroupWatch] = {}
        # Groups with a change not yet sent, held back by the group frame interval.
        self._groups_due: dict[_GroupWatch, None] = {}
        self._feeds: dict[str, _FeedWatch] = {}
        # Feeds with subscribers waiting for their first answer.
        self._feeds_waiting: dict[_FeedWatch, None] = {}
        # Owners whose unfinished tasks are to be read; announced (owner, task id) pairs.
        self._feeds_to_load: set[str] = set()
        self._announced: list[tuple[str, str]] = []
        self._feed_channels_to_subscribe: set[str] = set()
        self._feed_channels_to_unsubscribe: set[str] = set()
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

    def __repr__(self) -> str:
        return (
            f"<Hub {'healthy' if self.healthy else 'degraded'} "
            f"connections={len(self.connections)} tasks={len(self._watches)} "
            f"groups={len(self._groups)} feeds={len(self._feeds)}>"
        )

    # -- called by the connections (synchronous: no await between check and act)

    @property
    def watched(self) -> frozenset[str]:
        """The task ids the hub is reading (for tests and metrics)."""
        return frozenset(self._watches)

    @property
    def watched_feeds(self) -> frozenset[str]:
        """The owners whose feeds the hub follows (for tests and metrics)."""
        return frozenset(self._feeds)

    @property
    def watched_groups(self) -> frozenset[str]:
        """The group ids the hub is tallying (for tests and metrics)."""
        return frozenset(self._groups)

    def current(self, task_id: str) -> Update | None:
        """What a new subscriber of a watched task is handed at once: its last update,
        or None (not read yet, or its record vanished and is being waited for)."""
        watch = self._watches.get(task_id)
        return None if watch is None else watch.update

    def members_of(self, group_id: str) -> tuple[str, ...] | None:
        """A watched group's member ids (so a new subscriber need not read them again)."""
        group = self._groups.get(group_id)
        return None if group is None else group.members

    def stats(self) -> HubStats:
        """What metrics report of the hub and its connections, read when scraped."""
        sent, coalesced = self._frames_sent, self._frames_coalesced
        subscriptions = 0
        for subscriber in self.connections:
            sent += subscriber.frames_sent
            coalesced += subscriber.frames_coalesced
            subscriptions += len(subscriber.watching)
        return HubStats(
            connections=len(self.connections),
            subscriptions=subscriptions,
            watched_tasks=len(self._watches),
            watched_groups=len(self._groups),
            watched_feeds=len(self._feeds),
            stalled_tasks=sum(watch.stalled for watch in self._watches.values()),
            healthy=self.healthy,
            frames_sent=sent,
            frames_coalesced=coalesced,
        )

    def connect(self, subscriber: Subscriber, sender: asyncio.Task[object]) -> None:
        """Register a connection; ``sender`` is cancelled if the client stops reading."""
        self.connections[subscriber] = sender

    def disconnect(self, subscriber: Subscriber) -> None:
        """Forget a connection and every subscription it held."""
        for task_id in list(subscriber.watching):
            self.unwatch(task_id, subscriber)
        if self.connections.pop(subscriber, None) is not None:
            # Its counts outlive it here, so the totals never go down.
            self._frames_sent += subscriber.frames_sent
            self._frames_coalesced += subscriber.frames_coalesced
        self.backed_up.discard(subscriber)

    def watch(self, task_id: str, subscriber: Subscriber) -> None:
        """Subscribe; the current status reaches the mailbox now (if known) or after one read."""
        watch = self._task_watch(task_id)
        watch.subscribers[subscriber] = None
        subscriber.watching.add(task_id)
        if watch.update is not None:
            subscriber.offer(watch.update)

    def watch_group(self, group_id: str, members: tuple[str, ...], subscriber: Subscriber) -> None:
        """Subscribe to a group whose member ids are ``members``; its current status
        reaches the mailbox now (if every member is known) or after one read."""
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = _GroupWatch(GroupTally(group_id, members), members)
            for task_id in members:
                watch = self._task_watch(task_id)
                if watch.groups is None:
                    watch.groups = []
                watch.groups.append(group)
                if watch.loaded:
                    # Already read for someone else: no need to wait for the next read.
                    group.tally.update(task_id, self._status_of(task_id, watch), watch.raw)
            if group.tally.complete:
                self._refresh_group(group, asyncio.get_running_loop().time())
        group.subscribers[subscriber] = None
        subscriber.watching.add(group_id)
        if group.update is not None:
            subscriber.offer(group.update)

    def watch_feed(self, owner: str, subscriber: Subscriber, since_ms: int | None = None) -> None:
        """Subscribe to ``owner``'s feed: first a ``feed`` message with the current status
        of each of its unfinished tasks (with, from ``since_ms`` on Redis's clock, the
        finals of those that ended since), then every status of every task of it."""
        feed = self._feeds.get(owner)
        if feed is None:
            feed = self._feeds[owner] = _FeedWatch(owner)
            self._feeds_to_load.add(owner)
            if self.push:
                self._feed_channels_to_unsubscribe.discard(owner)
                self._feed_channels_to_subscribe.add(owner)
        feed.subscribers.pop(subscriber, None)
        subscriber.watching.add(feed_key(owner))
        if since_ms is None and self._feed_read(feed):
            # Followed already, every task of it read: answered now, as ``watch`` is.
            subscriber.offer(feed_snapshot(owner, self.store.clock.now_ms(), self._statuses(feed)))
            feed.subscribers[subscriber] = None
            return
        feed.waiting[subscriber] = since_ms
        self._feeds_waiting[feed] = None
        self._wake.set()

    def unwatch(self, watched_id: str, subscriber: Subscriber) -> None:
        """Unsubscribe from a task, a group or a feed."""
        subscriber.watching.discard(watched_id)
        owner = feed_owner(watched_id)
        if owner is not None:
            feed = self._feeds.get(owner)
            if feed is not None:
                feed.subscribers.pop(subscriber, None)
                feed.waiting.pop(subscriber, None)
                if not feed.waiting:
                    self._feeds_waiting.pop(feed, None)
                if not feed.subscribers and not feed.waiting:
                    self._forget_feed(owner)
            return
        group = self._groups.get(watched_id)
        if group is not None:
            group.subscribers.pop(subscriber, None)
            if not group.subscribers:
                self._forget_group(watched_id)
            return
        watch = self._watches.get(watched_id)
        if watch is None:
            return
        watch.subscribers.pop(subscriber, None)
        if not watch.subscribers and not watch.groups and watch.feed is None:
            self._forget(watched_id)

    def worker_alive(self, beat: bytes | None, redis_now_ms: int) -> bool:
        """Whether a task's worker still beats for it (``beat`` fresher than the stall
        threshold, or the vanish grace): its missing record will be written again. REST
        asks the same, so that both wait for such a record rather than call it unknown."""
        fresh = self.stall_after or self.vanish_grace
        return beat is not None and not silent(beat, redis_now_ms, fresh)

    def _task_watch(self, task_id: str) -> _Watch:
        watch = self._watches.get(task_id)
        if watch is None:
            watch = self._watches[task_id] = _Watch()
            self._to_read.add(task_id)
            if self.push:
                self._to_unsubscribe.discard(task_id)
                self._to_subscribe.add(task_id)
            self._wake.set()
        return watch

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
            self._feed_channels_to_subscribe |= set(self._feeds)
            self._feed_channels_to_unsubscribe.clear()
        self._to_read |= set(self._watches)
        self._feeds_to_load |= set(self._feeds)
        if recovering:
            self._judge_stalls_from = loop.time() + self.stall_grace
        # Redis may be another server now (a failover), with a clock of its own.
        self.store.clock.forget()
        self.healthy = True
        next_poll = loop.time() + self.poll_interval
        next_reap = loop.time() + self._reap_interval
        next_feed_poll = loop.time() + _FEED_POLL_INTERVAL
        while True:
            self._raise_if_listener_failed()
            await self._sync_channels()
            now = loop.time()
            polling = False
            if now >= next_poll:
                if self._watches:
                    self._to_read |= set(self._watches)
                    polling = True
                # Drift-corrected, but never a burst of catch-up polls after a stall.
                next_poll = max(next_poll + self.poll_interval, now)
            if now >= next_reap:
                self._reap_slow_clients(now)
                next_reap = now + self._reap_interval
            if self._groups_due:
                self._send_due_groups(now)
            if now >= next_feed_poll:
                self._feeds_to_load |= set(self._feeds)
                next_feed_poll = now + _FEED_POLL_INTERVAL
            if self._announced:
                announced, self._announced = self._announced, []
                for owner, task_id in announced:
                    feed = self._feeds.get(owner)
                    if feed is not None:
                        self._follow_for_feed(feed, task_id)
            if self._feeds_to_load:
                owners = [owner for owner in self._feeds_to_load if owner in self._feeds]
                self._feeds_to_load.clear()
                if owners:
                    unfinished = await self.store.read_unfinished(owners, FEED_MAX_TASKS)
                    for owner, task_ids in unfinished.items():
                        feed = self._feeds.get(owner)
                        if feed is None:
                            continue
                        feed.loaded = True
                        # Only what the set still holds needs remembering as ended.
                        feed.gone.intersection_update(task_ids)
                        for task_id in task_ids:
                            if task_id not in feed.gone:
                                self._follow_for_feed(feed, task_id)
                continue
            if self._to_read:
                ids = [task_id for task_id in self._to_read if task_id in self._watches]
                self._to_read.clear()
                if ids:
                    beat_ids = self._heartbeats_to_read(ids, polling)
                    # perf_counter, not the loop's clock: uvloop's counts whole ms.
                    started = time.perf_counter()
                    reading = await self.store.read_many(ids, beat_ids)
                    self.metrics.read_seconds.observe(time.perf_counter() - started)
                    # The read time stands for the write time: records carry no time of
                    # their own, and with push the read follows the write within ms.
                    self._apply_all(ids, beat_ids, reading, loop.time())
                # In the same turn: under steady traffic a turn with nothing to read may
                # never come, and a new feed subscriber would wait for it.
                ready = self._feeds_ready()
                if ready:
                    await self._answer_feeds(ready)
                continue
            ready = self._feeds_ready()
            if ready:
                await self._answer_feeds(ready)
                continue
            self._wake.clear()
            # Nothing watched and nobody connected: sleep until something happens.
            deadlines = [next_poll] if self._watches else []
            if self._feeds:
                deadlines.append(next_feed_poll)
            if self.connections:
                deadlines.append(next_reap)
            if self._groups_due:
                deadlines.append(min(g.sent_at for g in self._groups_due) + _GROUP_FRAME_INTERVAL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(deadlines) if deadlines else None):
                    await self._wake.wait()

    @property
    def _reap_interval(self) -> float:
        return min(1.0, self.slow_client_timeout / 4)

    def _heartbeats_to_read(self, ids: list[str], polling: bool) -> list[str]:
        """Whose heartbeat to read with these records: a task read for the first time
        (its first status must say whether it is stalled, and a missing record whether
        its worker still runs it), one whose record vanished (whether to wait for it)
        and, on a poll with stall detection on, every task running by its last record.
        A changed record needs none: it is a sign of life."""
        watches = self._watches
        stalls = polling and bool(self.stall_after)
        return [
            task_id
            for task_id in ids
            if not (watch := watches[task_id]).loaded
            or watch.vanished_at is not None
            or (stalls and watch.running)
        ]

    def _apply_all(self, ids: list[str], beat_ids: list[str], reading: Reading, now: float) -> None:
        beats = dict(zip(beat_ids, reading.beats, strict=True)) if beat_ids else {}
        judging = now >= self._judge_stalls_from
        redis_now_ms = self.store.clock.now_ms()
        changed_groups: dict[_GroupWatch, None] = {}
        for task_id, raw in zip(ids, reading.records, strict=True):
            watch = self._watches.get(task_id)
            if watch is None:
                continue  # unwatched meanwhile
            if raw is None and (
                watch.loaded or self.worker_alive(beats.get(task_id), redis_now_ms)
            ):
                # Gone after it was read, or missing while its worker beats: wait for it.
                watch.loaded = True
                self._vanished(
                    task_id, watch, beats.get(task_id), redis_now_ms, now, changed_groups
                )
                continue
            if watch.loaded and raw == watch.raw:
                # Unchanged: nothing decoded, nothing sent, unless its worker fell silent
                # (or was heard again).
                if task_id in beats and watch.running and raw is not None:
                    # Running by its record: only the beat's age decides.
                    stalled = silent(beats[task_id], redis_now_ms, self.stall_after)
                    if stalled != watch.stalled and (judging or not stalled):
                        watch.stalled = stalled
                        status = decode_status(task_id, raw)
                        self._deliver_status(task_id, watch, status, now, changed_groups)
                continue
            watch.vanished_at = None
            first_read = not watch.loaded
            watch.loaded, watch.raw = True, raw
            if raw is None:
                watch.update = unknown_task(task_id)
                for group in watch.groups or ():
                    group.tally.update(task_id, None)
                    changed_groups[group] = None
                self._deliver(task_id, watch)
                continue
            status = decode_status(task_id, raw)
            watch.running = can_stall(status["state"])
            # A new record is the task's own sign of life; only a first read, with no
            # earlier record to compare, is judged by the heartbeat.
            beat = beats.get(task_id)
            watch.stalled = (
                first_read
                and judging
                and is_stalled(status["state"], beat, redis_now_ms, self.stall_after)
            )
            if status["progress"] is not None and not status["final"]:
                # Once per change, however many subscribers: part of the one update.
                watch.eta.observe(now, status["progress"]["current"], status["progress"]["total"])
            self._deliver_status(task_id, watch, status, now, changed_groups)
        for group in changed_groups:
            if group.tally.complete and self._groups.get(group.tally.group_id) is group:
                self._group_changed(group, now)

    def _vanished(
        self,
        task_id: str,
        watch: _Watch,
        beat: bytes | None,
        redis_now_ms: int,
        now: float,
        changed_groups: dict[_GroupWatch, None],
    ) -> None:
        """The record of a task the hub had read is gone (a Redis restart without
        persistence, a failover, a deletion). Its last update is no longer handed to new
        subscribers (REST says 404 meanwhile); its worker may write again, and while it
        beats the hub waits for that; with neither a record nor a beat for
        ``vanish_grace``, the subscribers are told the task is unknown, as REST does."""
        if watch.vanished_at is None:
            watch.vanished_at, watch.raw, watch.update = now, None, None
            return
        if self.worker_alive(beat, redis_now_ms):
            watch.vanished_at = now  # its worker is alive: the record will come back
            return
        if now - watch.vanished_at < self.vanish_grace:
            return
        watch.update = unknown_task(task_id)
        for group in watch.groups or ():
            group.tally.update(task_id, None)
            changed_groups[group] = None
        self._deliver(task_id, watch)

    def _status_of(self, task_id: str, watch: _Watch) -> Status | None:
        """A loaded watch's status, decoded again from its raw record (None: no record)."""
        if watch.raw is None:
            return None
        status = decode_status(task_id, watch.raw)
        status["stalled"] = watch.stalled
        return status

    def _deliver_status(
        self,
        task_id: str,
        watch: _Watch,
        status: Status,
        now: float,
        changed_groups: dict[_GroupWatch, None],
    ) -> None:
        """Make a task's update from its status and deliver it to its subscribers and groups."""
        status["stalled"] = watch.stalled
        progress = status["progress"]
        if progress is not None and not status["final"]:
            progress["rate"], progress["eta_s"] = watch.eta.estimate(now)
            if watch.stalled:
                progress["eta_s"] = None  # nobody is working on it: no time left to tell
        assert watch.raw is not None
        watch.update = status_update(status, watch.raw)
        for group in watch.groups or ():
            group.tally.update(task_id, status, watch.raw)
            changed_groups[group] = None
        self._deliver(task_id, watch)

    def _deliver(self, task_id: str, watch: _Watch) -> None:
        update = watch.update
        assert update is not None
        for subscriber in watch.subscribers:
            subscriber.offer(update)
        feed = watch.feed
        if feed is not None:
            if update.kind is not Kind.UNKNOWN:
                # (No record and no worker: not the owner's task any more, its record
                # expired without a final. Nothing to tell the feed.)
                for subscriber in feed.subscribers:
                    if subscriber not in watch.subscribers:  # (it had it just now)
                        subscriber.offer(update)
            if update.kind.terminal:
                # Ended, for the feed: not followed again should the owner's set still
                # hold it (a final written by a backend that is not taskcast's).
                feed.gone.add(task_id)
        if update.kind.terminal:
            # Handed out to everyone watching, groups included: the watch is over.
            self._forget(task_id)

    def _group_changed(self, group: _GroupWatch, now: float) -> None:
        """Deliver a changed group's update now, or once the group interval has passed."""
        if group.tally.final or now >= group.sent_at + _GROUP_FRAME_INTERVAL:
            self._groups_due.pop(group, None)
            self._refresh_group(group, now)
        else:
            self._groups_due[group] = None

    def _send_due_groups(self, now: float) -> None:
        for group in list(self._groups_due):
            if now >= group.sent_at + _GROUP_FRAME_INTERVAL:
                del self._groups_due[group]
                self._refresh_group(group, now)

    def _refresh_group(self, group: _GroupWatch, now: float) -> None:
        """Make a group's update from its tally and deliver it (ending it when final)."""
        group.sent_at = now
        tally = group.tally
        group.eta.observe(now, tally.fraction_done, tally.size)
        estimate = None if tally.final or tally.stalled else group.eta.estimate(now).eta_s
        eta_s = group.countdown.show(now, estimate)
        update = group.update = group_update(tally.status(eta_s))
        for subscriber in group.subscribers:
            subscriber.offer(update)
        if tally.final:
            self._forget_group(tally.group_id)

    def _forget_group(self, group_id: str) -> None:
        group = self._groups.pop(group_id)
        self._groups_due.pop(group, None)
        for task_id in group.members:
            watch = self._watches.get(task_id)
            if watch is None or watch.groups is None:
                continue
            with contextlib.suppress(ValueError):
                watch.groups.remove(group)
            if not watch.groups:
                watch.groups = None
                if not watch.subscribers and watch.feed is None:
                    self._forget(task_id)

    # -- feeds

    def _follow_for_feed(self, feed: _FeedWatch, task_id: str) -> None:
        """Follow an unfinished task of the feed's owner (read, or announced)."""
        if task_id in feed.tasks:
            return
        feed.tasks[task_id] = None
        watch = self._task_watch(task_id)
        watch.feed = feed
        if watch.update is not None:
            # Already read for someone else: the feed's subscribers have it now.
            for subscriber in feed.subscribers:
                if subscriber not in watch.subscribers:
                    subscriber.offer(watch.update)

    def _feed_read(self, feed: _FeedWatch) -> bool:
        """Whether a feed's set, and every task of it, has been read."""
        return feed.loaded and all(
            (watch := self._watches.get(task_id)) is None or watch.loaded for task_id in feed.tasks
        )

    def _statuses(self, feed: _FeedWatch) -> list[str]:
        """The status messages of a feed's unfinished tasks, as last sent."""
        return [
            update.text
            for task_id in feed.tasks
            if (watch := self._watches.get(task_id)) is not None
            and (update := watch.update) is not None
            and update.type == "status"
        ]

    def _feeds_ready(self) -> list[_FeedWatch]:
        """Feeds with new subscribers to answer, whose set and tasks have all been read."""
        return [feed for feed in self._feeds_waiting if self._feed_read(feed)]

    async def _answer_feeds(self, ready: list[_FeedWatch]) -> None:
        """Answer the new subscribers of ``ready`` feeds: one ``feed`` message each, with
        the finals of the tasks that ended since the time a resuming one gives."""
        # Every resuming subscriber's finals at once: one round trip for the lists, one
        # for the records (a deploy reconnects thousands of feeds at the same moment).
        resuming = sorted(
            {
                (feed.owner, since - FEED_REPLAY_MARGIN_MS)
                for feed in ready
                for since in feed.waiting.values()
                if since is not None
            }
        )
        ended = await self.store.read_finished_since(resuming, FEED_MAX_TASKS) if resuming else {}
        finals: dict[str, str] = {}
        wanted = sorted({task_id for ids in ended.values() for task_id in ids})
        if wanted:
            reading = await self.store.read_many(wanted)
            for task_id, raw in zip(wanted, reading.records, strict=True):
                if raw is not None:
                    status = decode_status(task_id, raw)
                    if status["final"]:
                        finals[task_id] = status_update(status, raw).text
        at = self.store.clock.now_ms()
        for feed in ready:
            if self._feeds.get(feed.owner) is not feed:
                continue  # its last subscriber left during the reads
            current = self._statuses(feed)
            plain: Update | None = None
            for subscriber, resume_from in list(feed.waiting.items()):
                if resume_from is None:
                    plain = plain or feed_snapshot(feed.owner, at, current)
                    answer = plain
                else:
                    since_ids = ended.get((feed.owner, resume_from - FEED_REPLAY_MARGIN_MS))
                    if since_ids is None:
                        continue  # came during the reads: answered on the next round
                    replayed = [
                        finals[task_id]
                        for task_id in since_ids
                        if task_id in finals and task_id not in feed.tasks
                    ]
                    answer = feed_snapshot(feed.owner, at, [*current, *replayed])
                del feed.waiting[subscriber]
                subscriber.offer(answer)
                feed.subscribers[subscriber] = None
            if not feed.waiting:
                self._feeds_waiting.pop(feed, None)

    def _forget_feed(self, owner: str) -> None:
        feed = self._feeds.pop(owner)
        self._feeds_waiting.pop(feed, None)
        self._feeds_to_load.discard(owner)
        for task_id in feed.tasks:
            watch = self._watches.get(task_id)
            if watch is None or watch.feed is not feed:
                continue
            watch.feed = None
            if not watch.subscribers and not watch.groups:
                self._forget(task_id)
        if self.push:
            self._feed_channels_to_subscribe.discard(owner)
            self._feed_channels_to_unsubscribe.add(owner)
            self._wake.set()

    def _forget(self, task_id: str) -> None:
        watch = self._watches.pop(task_id)
        if watch.feed is not None:
            watch.feed.tasks.pop(task_id, None)
        self._to_read.discard(task_id)
        if self.push:
            self._to_subscribe.discard(task_id)
            self._to_unsubscribe.add(task_id)
            self._wake.set()

    # -- push

    async def _sync_channels(self) -> None:
        if not self.push or not (
            self._to_subscribe
            or self._to_unsubscribe
            or self._feed_channels_to_subscribe
            or self._feed_channels_to_unsubscribe
        ):
            return
        pubsub = await self._ensure_pubsub()
        if self._to_unsubscribe or self._feed_channels_to_unsubscribe:
            gone = [self.store.key(task_id) for task_id in self._to_unsubscribe]
            gone += [self.store.feed_channel(owner) for owner in self._feed_channels_to_unsubscribe]
            self._to_unsubscribe.clear()
            self._feed_channels_to_unsubscribe.clear()
            await pubsub.unsubscribe(*gone)
        if self._to_subscribe or self._feed_channels_to_subscribe:
            channels = [self.store.key(task_id).encode() for task_id in self._to_subscribe]
            channels += [
                self.store.feed_channel(owner).encode()
                for owner in self._feed_channels_to_subscribe
            ]
            self._to_subscribe.clear()
            self._feed_channels_to_subscribe.clear()
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
        feeds = self.store.feed_channel("").encode()
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "message":
                self.metrics.pubsub_messages.inc()
                if channel.startswith(feeds):
                    # A new task of a watched owner: its id.
                    owner = channel[len(feeds) :].decode()
                    self._announced.append((owner, bytes(message["data"]).decode()))
                else:
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
        for subscriber in list(self.backed_up):
            since, sender = subscriber.sending_since, self.connections.get(subscriber)
            if since is not None and now - since > limit and sender and not sender.done():
                logger.info("closing a client that stopped reading for %.0f s", now - since)
                sender.cancel(msg="slow client")
                self.metrics.slow_clients_closed.inc()
