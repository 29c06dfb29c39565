"""JSON errors: every failure answers ``{"error": code, "detail": text}``, never HTML."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

# pydantic reads TypedDicts (for their JSON Schema) only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from taskcast.api.responses import json_response

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


class ErrorBody(TypedDict):
    """Every error's body: a code to act on, and what was wrong, in words."""

    error: str
    detail: str


class ApiError(Exception):
    """An error a handler raises to answer the client with a JSON error body."""

    def __init__(
        self, status_code: int, error: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.headers = headers


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the field: ``total: Input should be ...``."""
    parts = []
    for problem in exc.errors(include_url=False):
        where = ".".join(str(item) for item in problem["loc"]) or "body"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


def error_response(status_code: int, error: str, detail: str) -> Response:
    body: ErrorBody = {"error": error, "detail": detail}
    return json_response(body, status_code=status_code)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    response = error_response(exc.status_code, exc.error, exc.detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    response = error_response(exc.status_code, code, detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def redis_error(request: Request, exc: Exception) -> Response:
    # Redis down or unreachable is an outage, not a bug: a 503 the client may retry. The
    # exception's text stays in the log (it can name hosts); the client gets the kind.
    logger.warning("Redis failed on %s %s: %r", request.method, request.url.path, exc)
    state = getattr(request.app.state, "taskcast", None)
    if state is not None:
        state.metrics.request_redis_errors.inc()
    return error_response(503, "unavailable", "the result store (Redis) is unavailable; retry")


async def client_left(request: Request, exc: Exception) -> Response:
    # The client went away mid-request: nothing failed here, and nobody reads the answer.
    logger.info(
        "%s %s: the client left before its request was read", request.method, request.url.path
    )
    return error_response(400, "client_disconnected", "the client left before its request was read")


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log, never to the client.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "the server failed to handle the request")


EXCEPTION_HANDLERS = {
    ApiError: api_error,
    ClientDisconnect: client_left,
    HTTPException: http_error,
    RedisError: redis_error,
    Exception: unexpected_error,
}
