"""A WebSocket connection as the hub sees it: how each frame reaches that one client.

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
import enum
import itertools
import types
from collections.abc import Callable, Coroutine, Generator, Hashable
from typing import Any

from service.protocol import CLOSE_NORMAL, CLOSE_UNKNOWN_TASK

Send = Callable[[str], Coroutine[Any, Any, None]]


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
    """One connection: its pending frames, its live subscriptions, and its sender."""

    __slots__ = (
        "_failure",
        "_loop",
        "_pending",
        "_replies",
        "_send",
        "_sending",
        "_stalled",
        "_wakeup",
        "close_code",
        "max_replies",
        "sending_since",
        "single",
        "tasks",
    )

    def __init__(self, send: Send, *, single: bool = False, max_replies: int = 256) -> None:
        self._send = send
        self._loop = asyncio.get_running_loop()
        # Status frames are keyed by task id (the newest replaces the older); replies by
        # a counter (never coalesced). Dicts keep insertion order.
        self._pending: dict[Hashable, tuple[str, Kind]] = {}
        self._replies = itertools.count()
        self._wakeup: asyncio.Future[None] | None = None
        # A send that found the socket's buffer full, for the sender to finish.
        self._stalled: tuple[Coroutine[Any, Any, None], Any, Kind] | None = None
        self._failure: Exception | None = None
        self._sending = False
        # One task per socket (/ws/tasks/{id}): its terminal frame ends the connection.
        self.single = single
        self.max_replies = max_replies
        # The close code the sender ends the connection with, once it is known.
        self.close_code: int | None = None
        # The task ids this connection watches, for its limit and its clean-up.
        self.tasks: set[str] = set()
        # Loop time since a send has been waiting on the client; None otherwise (read by
        # the hub's slow-client reaper).
        self.sending_since: float | None = None

    def offer(self, task_id: str, frame: str, kind: Kind) -> None:
        """Called by the hub with a task's newest frame."""
        if kind.terminal:
            self.tasks.discard(task_id)
        if self._idle():
            self._send_now(frame, kind)
        else:
            self._pending[task_id] = (frame, kind)
            self._wake()

    def reply(self, frame: str) -> None:
        """Send an answer to the client, after whatever is already pending."""
        if self._idle():
            self._send_now(frame, Kind.REPLY)
            return
        if len(self._pending) >= self.max_replies + len(self.tasks):
            raise MailboxOverflow
        self._pending[("reply", next(self._replies))] = (frame, Kind.REPLY)
        self._wake()

    def discard(self, task_id: str) -> None:
        """Forget a task's pending frame (the client unsubscribed)."""
        self._pending.pop(task_id, None)

    async def run(self) -> int | None:
        """The connection's sender: finish stalled sends, drain the mailbox, until a close.

        Returns the close code once a terminal frame has gone out on a single-task
        socket; raises whatever a send raised (the client is gone).
        """
        while True:
            if self._failure is not None:
                raise self._failure
            self._sending = True
            if self._stalled is not None:
                send, waiting_on, kind = self._stalled
                self._stalled = None
                await _finish(send, waiting_on)
                self._sent(kind)
            while self._pending and self.close_code is None:
                frames = list(self._pending.values())
                self._pending.clear()
                for frame, kind in frames:
                    self.sending_since = self._loop.time()
                    await self._send(frame)
                    self._sent(kind)
                    if self.close_code is not None:
                        break
            self._sending = False
            self.sending_since = None
            if self.close_code is not None:
                return self.close_code
            if self._stalled is None and self._failure is None:
                self._wakeup = self._loop.create_future()
                try:
                    await self._wakeup
                finally:
                    self._wakeup = None

    def _idle(self) -> bool:
        return not (
            self._pending
            or self._sending
            or self._stalled is not None
            or self._failure is not None
            or self.close_code is not None
        )

    def _send_now(self, frame: str, kind: Kind) -> None:
        send = self._send(frame)
        try:
            waiting_on = send.send(None)
        except StopIteration:
            self._sent(kind)
        except Exception as exc:  # the client is gone: its sender ends the connection
            self._failure = exc
            self._wake()
        else:
            # The socket's buffer is full. Waiting here would stall everyone the caller
            # serves: the connection's own sender finishes this send instead.
            self._stalled = (send, waiting_on, kind)
            self.sending_since = self._loop.time()
            self._wake()

    def _sent(self, kind: Kind) -> None:
        if self.single and kind.terminal:
            self.close_code = CLOSE_NORMAL if kind is Kind.FINAL else CLOSE_UNKNOWN_TASK
            self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
