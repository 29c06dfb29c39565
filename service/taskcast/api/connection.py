"""One connection class for every transport the hub feeds: WebSockets (``/ws``,
``/ws/tasks|groups/{id}``, celery-progress's ``/ws/progress/{id}/``) and event streams.

What every connection does is written here once: admitted within the connection limits,
its sender started and registered with the hub, its client read in the connection's own
task until the client leaves or the sender ends (``Interrupt``), the verdict on how it
ended (the terminal update sent, the client gone, the client no longer reading), and the
clean-up. Each endpoint says only what differs, in hooks, as Starlette's
``WebSocketEndpoint`` does with ``on_connect``/``on_receive``/``on_disconnect``:

- ``on_connect``: subscribe what is watched from the start;
- ``receive_client``: read the client until it leaves (``SocketConnection`` reads
  WebSocket frames, with their size limit, and hands each to ``on_frame``);
- ``write``: how one update goes out (``Subscriber.write``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket

from taskcast.api.guards import app_state, may_watch, watch_refused
from taskcast.ids import is_task_id
from taskcast.limits import Refusal
from taskcast.live import protocol
from taskcast.live.protocol import Update
from taskcast.live.subscriber import Interrupt, MailboxOverflow, Subscriber
from taskcast.state import AppState

logger = logging.getLogger(__name__)

# How long a close frame may wait for a congested socket before the connection is dropped.
CLOSE_TIMEOUT = 1.0


class Connection(Subscriber):
    """A client connection served by the hub: a Subscriber with a life of its own."""

    __slots__ = ("_interrupt", "client", "state")

    def __init__(self, state: AppState, client: str, *, single: bool = False) -> None:
        super().__init__(state.hub.backed_up, single=single)
        self.state = state
        # The client's address, for the per-address cap. Behind a proxy this is the
        # proxy's unless uvicorn trusts its headers (--proxy-headers, --forwarded-allow-ips).
        self.client = client
        # Ends the wait on the client: the sender ended, or the server is stopping.
        self._interrupt = Interrupt()

    def admit(self) -> Refusal | None:
        """Count this connection against the limits; or, counting nothing, why not."""
        refused = self.state.clients.acquire(self.client)
        if refused is not None:
            self.state.metrics.connections_refused[refused.limit].inc()
        return refused

    def release(self) -> None:
        """Forget a connection that ``admit`` counted."""
        self.state.clients.release(self.client)

    def interrupt(self) -> None:
        """End the wait on the client now (the server is stopping)."""
        self._interrupt()

    async def serve(self) -> int | None:
        """Serve the connection until the client leaves or the sender ends; the close
        code to end it with: the sender's, once a terminal update went out on a single
        socket; ``CLOSE_SLOW_CLIENT`` when the hub's reaper judged the client no longer
        reading; ``CLOSE_FLOOD`` for a client that asks more than it reads; whatever
        ``receive_client`` returned; None when the client left or a send failed."""
        hub = self.state.hub
        sender = asyncio.create_task(self.run())
        hub.connect(self, sender)
        interrupt = self._interrupt
        # The done callback, not a second task and an asyncio.wait: their futures, sets
        # and callbacks would live as long as the socket.
        sender.add_done_callback(interrupt)
        code: int | None = None
        try:
            async with asyncio.timeout(None) as interrupt.timeout:
                self.on_connect()
                ended = await self.receive_client()
                code = ended if isinstance(ended, int) else None
        except TimeoutError:
            pass  # interrupted
        except MailboxOverflow:
            code = protocol.CLOSE_FLOOD
        except Exception:
            # A client that leaves ends the read quietly; anything else is a bug here.
            logger.exception("%r: reading the client failed", self)
        finally:
            interrupt.timeout = None
            hub.disconnect(self)
            sender.cancel()
            (outcome,) = await asyncio.gather(sender, return_exceptions=True)
        if code is None and interrupt.fired:
            if isinstance(outcome, int):
                code = outcome  # the terminal update went out
            elif isinstance(outcome, asyncio.CancelledError):
                code = protocol.CLOSE_SLOW_CLIENT  # reaped: the client stopped reading
        return code

    def on_connect(self) -> None:
        """Subscribe what the connection watches from the start (nothing by default)."""

    def receive_client(self) -> Awaitable[object]:
        """What reads the client until it leaves (anything but an int) or must be closed
        (an int: the close code). An awaitable, not necessarily a coroutine of its own:
        a transport that only waits for its client to leave awaits its ``receive``
        directly, a frame fewer held by every idle connection."""
        raise NotImplementedError


class SocketConnection(Connection):
    """A WebSocket: updates go out as text frames; client frames, within the size limit,
    go to ``on_frame``."""

    __slots__ = ("websocket",)

    def __init__(self, websocket: WebSocket, *, single: bool = False) -> None:
        client = websocket.client.host if websocket.client else ""
        super().__init__(app_state(websocket), client, single=single)
        self.websocket = websocket

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.websocket.url.path} from {self.client}>"

    def write(self, update: Update) -> Coroutine[Any, Any, None]:
        return self.websocket.send_text(update.text)

    async def handle(self) -> None:
        """Serve the accepted socket within the connection limits, then close it."""
        refused = self.admit()
        if refused is not None:
            await self.websocket.send_text(
                protocol.error_message("too_many_connections", refused.detail)
            )
            await self.websocket.close(protocol.CLOSE_TRY_AGAIN_LATER)
            return
        try:
            code = await self.serve()
        finally:
            self.release()
        if code is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.websocket.close(code)

    async def receive_client(self) -> int | None:
        limit = self.state.settings.ws_max_message_bytes
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                if message.get("code") == protocol.CLOSE_SLOW_CLIENT:
                    # Closed by the keepalive (taskcast.live.ws_transport): counted as the
                    # reaper's closes are.
                    self.state.metrics.slow_clients_closed.inc()
                return None
            text = client_frame(message, limit)
            if isinstance(text, int):
                return text
            await self.on_frame(text)

    async def on_frame(self, text: str | None) -> None:
        """Act on one client frame (None: a binary frame, which no protocol here uses)."""
        raise NotImplementedError


def client_frame(message: Message, limit: int) -> str | int | None:
    """A received message's text; a close code when it is over ``limit`` bytes; None when
    it is binary and within the limit."""
    text = message.get("text")
    if text is None:
        return protocol.CLOSE_TOO_BIG if len(message.get("bytes") or b"") > limit else None
    if len(text) > limit // 4 and len(text.encode()) > limit:
        return protocol.CLOSE_TOO_BIG
    return str(text)


async def accept_watch(websocket: WebSocket, what: str) -> str | None:
    """Accept a socket for one task or group (``what``); its id, or None once refused
    (a malformed id, no valid token) and closed."""
    # Accept first: a close before accepting would reach the client as an HTTP 403,
    # not as the close code the protocol promises.
    await websocket.accept()
    raw: str = websocket.path_params[f"{what}_id"]
    if not is_task_id(raw):
        shown = raw if len(raw) <= 64 else raw[:61] + "..."
        detail = f"{what} id must be a UUID, got {shown!r}"
        await websocket.send_text(protocol.error_message(f"invalid_{what}_id", detail))
        await websocket.close(protocol.CLOSE_INVALID_TASK_ID)
        return None
    watched_id = raw.lower()
    if not may_watch(websocket, watched_id, websocket.query_params.get("token")):
        await websocket.send_text(protocol.error_message("unauthorized", watch_refused(what)))
        await websocket.close(protocol.CLOSE_UNAUTHORIZED)
        return None
    return watched_id
