"""The demo page at ``/``: plain HTML, CSS and JavaScript from ``taskcast/static``.

Nothing is built and nothing is fetched from elsewhere: the files ship inside the
package (and so in the wheel and the image) and speak the public API like any client.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent.parent / "static"

# Only this origin's scripts, styles and connections (the WebSocket included: CSP 3
# lets 'self' match ws: and wss: on the same host).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=_HEADERS)


routes = [
    Route("/", index, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]
