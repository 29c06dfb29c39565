"""Checks on what clients send, done before anything reaches Celery or Redis."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.catalog import Params
from service.errors import ApiError, describe_validation_error

P = TypeVar("P", bound=Params)
Q = TypeVar("Q", bound=BaseModel)

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN)


def is_task_id(raw: str) -> bool:
    """Whether ``raw`` is a well-formed UUID, the only shape a task id may take."""
    return _UUID.fullmatch(raw) is not None


def parse_task_id(raw: str) -> str:
    """The canonical (lower-case) task id, or a 422 before it can become a Redis key."""
    if not is_task_id(raw):
        shown = raw if len(raw) <= 64 else raw[:64] + "..."
        raise ApiError(422, "invalid_task_id", f"task id must be a UUID, got {shown!r}")
    return raw.lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes ``limit`` bytes."""
    too_large = ApiError(413, "payload_too_large", f"request body is over {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _not_json() -> ApiError:
    return ApiError(400, "invalid_json", "request body is not valid JSON")


def _invalid_params(exc: ValidationError) -> ApiError:
    return ApiError(422, "invalid_params", describe_validation_error(exc))


def parse_params(model: type[P], body: bytes) -> P:
    """Validate a JSON object body against ``model``; an empty body means no parameters."""
    try:
        return model.model_validate_json(body if body.strip() else b"{}")
    except ValidationError as exc:
        if any(problem["type"] == "json_invalid" for problem in exc.errors()):
            raise _not_json() from None
        raise _invalid_params(exc) from None


def parse_json(body: bytes) -> Any:
    """A JSON body, decoded; 400 when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _not_json() from None


def check_params(model: type[P], values: dict[str, Any]) -> P:
    """Validate parameters gathered from several parts of a request against ``model``."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _invalid_params(exc) from None


def parse_query(model: type[Q], request: Request) -> Q:
    """Validate the query string against ``model`` (values arrive as text and are cast)."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise ApiError(422, "invalid_query", describe_validation_error(exc)) from None
