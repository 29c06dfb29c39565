"""The demo page at ``/``: plain HTML, CSS and JavaScript from ``taskcast/static``.

Nothing is built and nothing is fetched from elsewhere: the files ship inside the
package (and so in the wheel and the image) and speak the public API like any client.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from taskcast.api.guards import guarded

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


# Types for taskcast.js (taskcast.d.ts). The system's MIME table guesses a ".ts" file by
# its last suffix, as an MPEG transport stream (or, on Debian, a Qt translation file).
_TYPESCRIPT = "application/typescript; charset=utf-8"


class _StaticFiles(StaticFiles):
    """The static files, TypeScript declarations served as what they are."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if response.status_code == 200 and str(full_path).endswith(".d.ts"):
            response.headers["content-type"] = _TYPESCRIPT
        return response


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=_HEADERS)


routes = [
    guarded("/", index),
    Mount("/static", _StaticFiles(directory=STATIC_DIR), name="static"),
]
