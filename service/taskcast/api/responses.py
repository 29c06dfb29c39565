"""JSON responses, written by the one encoder every message uses (``taskcast.status.encode``)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from taskcast.status import encode


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        encode(content), status_code=status_code, headers=headers, media_type="application/json"
    )
