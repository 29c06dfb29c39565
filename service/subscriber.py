"""A WebSocket connection's mailbox: what the hub hands it, waiting to be sent.

The hub never sends. It drops each new frame into the mailboxes of a task's
subscribers, which costs a dict store and, for an idle connection, one wake-up; each
connection's own sender drains its mailbox. A slow client therefore only delays
itself, and since a task keeps a single slot per mailbox, a client that reads slower
than the task reports skips intermediate progress instead of piling it up. A terminal
frame (final status, or unknown task) is the last one the hub offers for that task, so
nothing can replace it: it is delivered exactly once.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Hashable


class Kind(enum.Enum):
    """What a frame means for the subscription it belongs to."""

    STATUS = "status"  # a non-final status: more may follow
    FINAL = "final"  # the final status: the subscription ends
    UNKNOWN = "unknown"  # no such task: the subscription ends
    REPLY = "reply"  # an answer to the client (pong, error, unsubscribed)

    @property
    def terminal(self) -> bool:
        return self in (Kind.FINAL, Kind.UNKNOWN)


class MailboxOverflow(Exception):
    """The client sent more requests than it reads replies for."""


class Subscriber:
    """One connection's pending frames, its live subscriptions, and its sender's wake-up."""

    __slots__ = ("_pending", "_replies", "_wakeup", "max_replies", "sending_since", "tasks")

    def __init__(self, max_replies: int = 256) -> None:
        # Status frames are keyed by task id (the newest replaces the older); replies by
        # a counter (never coalesced). Dicts keep insertion order.
        self._pending: dict[Hashable, tuple[str, Kind]] = {}
        self._replies = itertools.count()
        self._wakeup = asyncio.Event()
        self.max_replies = max_replies
        # The task ids this connection watches, for its limit and its clean-up.
        self.tasks: set[str] = set()
        # Loop time of the send in progress; None while idle (read by the slow-client reaper).
        self.sending_since: float | None = None

    def offer(self, task_id: str, frame: str, kind: Kind) -> None:
        """Called by the hub with a task's newest frame."""
        self._pending[task_id] = (frame, kind)
        if kind.terminal:
            self.tasks.discard(task_id)
        if not self._wakeup.is_set():
            self._wakeup.set()

    def reply(self, frame: str) -> None:
        """Queue an answer to the client, after whatever is already pending."""
        if len(self._pending) >= self.max_replies + len(self.tasks):
            raise MailboxOverflow
        self._pending[("reply", next(self._replies))] = (frame, Kind.REPLY)
        if not self._wakeup.is_set():
            self._wakeup.set()

    def discard(self, task_id: str) -> None:
        """Forget a task's pending frame (the client unsubscribed)."""
        self._pending.pop(task_id, None)

    async def take(self) -> list[tuple[str, Kind]]:
        """Wait for frames, then take all of them, oldest first."""
        await self._wakeup.wait()
        self._wakeup.clear()
        frames = list(self._pending.values())
        self._pending.clear()
        return frames
