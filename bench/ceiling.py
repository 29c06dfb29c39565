"""The ceiling of this stack: a bare Starlette WebSocket endpoint, no hub, no Redis.

It keeps its sockets in a list and, when told, sends one pre-encoded frame to each in
a plain loop, on the same uvicorn settings as taskcast. Nothing that fans frames out
on Starlette and uvicorn can go faster, so taskcast is measured as a fraction of it.

The same for Server-Sent Events: ``GET /sse`` holds a streaming HTTP response (raw ASGI
sends, no sse-starlette), and ``POST /sse/broadcast`` writes the frame, as the event
taskcast would send (``id:``, ``event: status``, ``data:``), to each stream in a loop.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from bench.stack import serve_baseline

GREETING = '{"type":"hello"}'
# What a stream gets first: the reconnect delay, and a status event as its greeting (the
# clients count status events, as they count a WebSocket's text frames).
SSE_GREETING = f"retry: 2000\r\n\r\nevent: status\r\ndata: {GREETING}\r\n\r\n".encode()
# An event id as long as taskcast's for one task (one state's digest).
SSE_ID = b"0badcafe"
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


class _Stream(Response):
    """An event stream, kept in ``streams`` (as its ``send``) until the client goes."""

    def __init__(self, streams: list[Send]) -> None:
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": SSE_GREETING, "more_body": True})
        self.streams.append(send)
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.streams.remove(send)


def create_app() -> Starlette:
    sockets: list[WebSocket] = []

    async def subscribe(websocket: WebSocket) -> None:
        await websocket.accept()
        sockets.append(websocket)
        await websocket.send_text(GREETING)
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            sockets.remove(websocket)

    async def broadcast(request: Request) -> Response:
        frame = (await request.body()).decode()
        for websocket in list(sockets):
            await websocket.send_text(frame)
        return Response(status_code=204)

    streams: list[Send] = []

    async def stream(request: Request) -> Response:
        return _Stream(streams)

    async def broadcast_sse(request: Request) -> Response:
        event = b"id: %s\r\nevent: status\r\ndata: %s\r\n\r\n" % (SSE_ID, await request.body())
        message = {"type": "http.response.body", "body": event, "more_body": True}
        for send in list(streams):
            await send(message)
        return Response(status_code=204)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            WebSocketRoute("/ws", subscribe),
            Route("/broadcast", broadcast, methods=["POST"]),
            Route("/sse", stream),
            Route("/sse/broadcast", broadcast_sse, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )


def main() -> None:
    serve_baseline(create_app(), __doc__ or "")


if __name__ == "__main__":
    main()
