"""JSON responses encoded with orjson (and, for what orjson cannot write, Python's json)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import Response


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    try:
        body = orjson.dumps(content)
    except TypeError:
        # An integer past 64 bits or nesting past 254 levels, from a task's result.
        body = json.dumps(content, allow_nan=False, separators=(",", ":")).encode()
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")
