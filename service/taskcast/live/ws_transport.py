"""The WebSocket protocol uvicorn runs for taskcast: uvicorn's sans-I/O one, whose
keepalive closes a client that stops reading with taskcast's own code.

A client that stops reading is noticed in one of two ways. If frames are sent to it, its
socket's buffer fills, and the hub's reaper closes it after ``TASKCAST_SLOW_CLIENT_TIMEOUT``
(``taskcast.live.subscriber``). If nothing is sent (its task is quiet), only the keepalive
ping tells: uvicorn closes such a client with 1011 after its own timeouts (20 s + 20 s).
Here the pings go every half of ``TASKCAST_SLOW_CLIENT_TIMEOUT`` and wait as long for the
answer, and the close says 4408, as the reaper's does; the app hears the same code, and
counts it.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from taskcast.live.protocol import CLOSE_SLOW_CLIENT


class TaskcastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, closing an unanswered keepalive with 4408."""

    def keepalive_timeout(self) -> None:
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():
            return
        # Told to the app first, so that its receiver ends with the reason.
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CLOSE_SLOW_CLIENT})
        self.conn.fail(CLOSE_SLOW_CLIENT, "client stopped reading")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()
