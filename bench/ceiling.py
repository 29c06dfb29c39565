"""The ceiling of this stack: a bare Starlette WebSocket endpoint, no hub, no Redis.

It keeps its sockets in a list and, when told, sends one pre-encoded frame to each in
a plain loop, on the same uvicorn settings as taskcast. Nothing that fans frames out
on Starlette and uvicorn can go faster, so taskcast is measured as a fraction of it.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bench.stack import serve_baseline

GREETING = '{"type":"hello"}'


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

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            WebSocketRoute("/ws", subscribe),
            Route("/broadcast", broadcast, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )


def main() -> None:
    serve_baseline(create_app(), __doc__ or "")


if __name__ == "__main__":
    main()
