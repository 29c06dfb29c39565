"""A connection as the hub sees it (a WebSocket or an event stream): how each update
reaches that one client.

A frame for an idle connection (nothing pending, no send in progress) is written at
once, by whoever produced it: the hub, or the connection's own receiver for a reply.
On uvicorn's sans-I/O WebSocket a send completes without ever suspending while the
socket's buffer has room, so this costs what a plain loop of sends costs, with no
task switch per client. Should a send find the buffer full, it is not awaited there:
it is handed, half done, to the connection's own sender task, and the frames that
follow wait in the mailbox, which keeps the newest frame per task. A slow client
therefore only delays itself and skips intermediate progress rather than piling it
up. A terminal frame (final status, or unknown task) is the last one the hub offers
for its task, so nothing can replace it: it is delivered exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import types
from collections.abc import Coroutine, Generator, Hashable
from typing import Any

from taskcast.live.protocol import CLOSE_NORMAL, CLOSE_UNKNOWN_TASK, Kind, Update


class MailboxOverflow(Exception):
    """The client sent more requests than it reads replies for."""


@types.coroutine
def _finish(send: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, Any, None]:
    """Finish, in the awaiting task, a send that stopped on ``waiting_on`` elsewhere."""
    try:
        # Exactly what the send itself would have handed its task: wait for it here.
        yield waiting_on
    except BaseException:
        send.close()
        raise
    yield from send


class Subscriber:
    """One connection: its pending updates, its live subscriptions, and its sender.

    A transport says how one update goes out by overriding ``write``.
    """

    __slots__ = (
        "_backed_up",
        "_busy",
        "_failure",
        "_loop",
        "_pending",
        "_pending_replies",
        "_replies",
        "_unfinished",
        "_wakeup",
        "close_code",
        "frames_coalesced",
        "frames_sent",
        "max_replies",
        "sending_since",
        "single",
        "watching",
    )

    def __init__(
        self,
        backed_up: set[Subscriber],
        *,
        single: bool = False,
        max_replies: int = 256,
    ) -> None:
        # Shared by every connection: those whose send waits on the client right now,
        # so the hub's slow-client reaper looks at them and not at everyone.
        self._backed_up = backed_up
        self._loop = asyncio.get_running_loop()
        # Status frames are keyed by task id (the newest replaces the older); replies by
        # a counter (never coalesced). Dicts keep insertion order.
        self._pending: dict[Hashable, Update] = {}
        self._replies = itertools.count()
        # Replies waiting in the mailbox (statuses are bounded by what is watched: a
        # feed's many tasks among them, so they are not counted against this).
        self._pending_replies = 0
        self._wakeup: asyncio.Future[None] | None = None
        # A send that found the socket's buffer full, for the sender to finish.
        self._unfinished: tuple[Coroutine[Any, Any, None], Any, Kind] | None = None
        self._failure: Exception | None = None
        # Whether the sender owns the connection (a send or frames are outstanding): then
        # frames queue in the mailbox, behind what is already there, so order holds.
        self._busy = False
        # One task per socket (/ws/tasks/{id}): its terminal frame ends the connection.
        self.single = single
        self.max_replies = max_replies
        # The close code the sender ends the connection with, once it is known.
        self.close_code: int | None = None
        # The task and group ids this connection watches, for its limit and its clean-up.
        self.watching: set[str] = set()
        # Loop time since a send has been waiting on the client; None otherwise (read by
        # the hub's slow-client reaper).
        self.sending_since: float | None = None
        # Counted here, as plain integers, and summed only when metrics are scraped.
        self.frames_sent = 0
        self.frames_coalesced = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} watching={len(self.watching)} "
            f"pending={len(self._pending)} backed_up={self.sending_since is not None}>"
        )

    def write(self, update: Update) -> Coroutine[Any, Any, None]:
        """The send of one update to the client: the transport's own (a coroutine the
        subscriber drives without awaiting while the socket has room)."""
        raise NotImplementedError

    def offer(self, update: Update) -> None:
        """Called by the hub with the newest update of a task or group."""
        watched_id = update.watched_id
        if update.kind.terminal:
            self.watching.discard(watched_id)
        if self._busy:
            if watched_id in self._pending:
                self.frames_coalesced += 1
            self._pending[watched_id] = update
            self._wake()
        else:
            self._send_now(update)

    def reply(self, update: Update) -> None:
        """Send an answer to the client, after whatever is already pending."""
        if not self._busy:
            self._send_now(update)
            return
        if self._pending_replies >= self.max_replies:
            raise MailboxOverflow
        self._pending_replies += 1
        self._pending[("reply", next(self._replies))] = update
        self._wake()

    def discard(self, watched_id: str) -> None:
        """Forget a task's or group's pending update (the client unsubscribed)."""
        self._pending.pop(watched_id, None)

    async def run(self) -> int | None:
        """The connection's sender: finish a send left unfinished, drain the mailbox, until a close.

        Returns the close code once a terminal frame has gone out on a single-task
        socket; raises whatever a send raised (the client is gone).
        """
        while True:
            await self._complete_send()
            while self._pending and self.close_code is None:
                updates = list(self._pending.values())
                self._pending.clear()
                self._pending_replies = 0
                for update in updates:
                    self._send_now(update)
                    await self._complete_send()
                    if self.close_code is not None:
                        break
            if self.close_code is not None:
                return self.close_code
            self._busy = False
            self._wakeup = self._loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    async def _complete_send(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._unfinished is None:
            return
        send, waiting_on, kind = self._unfinished
        try:
            await _finish(send, waiting_on)
        finally:
            self._unfinished = None
            self.sending_since = None
            self._backed_up.discard(self)
        self._sent(kind)

    def _send_now(self, update: Update) -> None:
        self.frames_sent += 1
        kind = update.kind
        send = self.write(update)
        try:
            waiting_on = send.send(None)
        except StopIteration:
            if kind.terminal and self.single:
                self._sent(kind)
        except Exception as exc:  # the client is gone: its sender ends the connection
            self._failure = exc
            self._wake()
        else:
            # The socket's buffer is full. Waiting here would hold up everyone the caller
            # serves: the connection's own sender finishes this send instead.
            self._unfinished = (send, waiting_on, kind)
            self.sending_since = self._loop.time()
            self._backed_up.add(self)
            self._wake()

    def _sent(self, kind: Kind) -> None:
        if self.single and kind.terminal:
            self.close_code = CLOSE_NORMAL if kind is Kind.FINAL else CLOSE_UNKNOWN_TASK
            self._wake()

    def _wake(self) -> None:
        self._busy = True
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)


class Interrupt:
    """Ends a connection's wait on its client once its sender has ended (a terminal frame
    sent, a failed send, the hub's reaper), or whenever called. The connection waits
    inside ``async with asyncio.timeout(None) as interrupt.timeout`` (which then raises
    TimeoutError) and sets ``timeout`` back to None after; ``fired`` says whether the
    wait was cut short. Given to the sender as its done callback: no second task and no
    ``asyncio.wait`` per connection, whose futures, sets and callbacks would live as
    long as the socket."""

    __slots__ = ("fired", "timeout")

    def __init__(self) -> None:
        self.timeout: asyncio.Timeout | None = None
        self.fired = False

    def __call__(self, _: object = None) -> None:
        timeout = self.timeout
        if timeout is not None and not timeout.expired():
            self.fired = True
            timeout.reschedule(-1.0)  # in the past: at once
