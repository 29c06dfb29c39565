"""Checks on what clients send, done before anything reaches Celery or Redis."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from taskcast.api.errors import ApiError, describe_validation_error
from taskcast.ids import is_task_id
from taskcast_celery.expose import WholeNumber

P = TypeVar("P", bound=BaseModel)
Q = TypeVar("Q", bound=BaseModel)


def parse_task_id(raw: str, what: str = "task") -> str:
    """The canonical (lower-case) id of a task (or group: ``what``), or a 422 before it
    can become a Redis key."""
    if not is_task_id(raw):
        shown = raw if len(raw) <= 64 else raw[:64] + "..."
        raise ApiError(422, f"invalid_{what}_id", f"{what} id must be a UUID, got {shown!r}")
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


# Deepest nesting a request body may have: far beyond any task's parameters, well within
# what every JSON reader and writer on the way (pydantic's among them) takes.
MAX_JSON_DEPTH = 100
_TOO_DEEP = f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)"


def _not_json(reason: str) -> ApiError:
    """400 for a body that is not JSON, saying where or why (a JSON reader's words)."""
    lowered = reason.lower()
    if "recursion limit" in lowered or "depth limit" in lowered:
        return ApiError(400, "invalid_json", _TOO_DEEP)
    if "infinity" in lowered:
        reason = f"a number too large to be finite ({reason})"
    elif "expected a json value" in lowered or "no digit after sign" in lowered:
        reason = f"{reason}; NaN and Infinity are not JSON"
    return ApiError(400, "invalid_json", f"request body is not valid JSON: {reason}")


def _depth(value: Any) -> int:
    """How deep lists and objects nest in a decoded JSON value (a scalar: 0)."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            level.extend((child, depth + 1) for child in children)
    return deepest


def decode_json(body: bytes) -> Any:
    """A JSON body, decoded strictly (orjson): no NaN, no Infinity, no number too large
    to be finite, which a lenient reader would turn into floats nobody can send back,
    and nothing nested past ``MAX_JSON_DEPTH``."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _not_json(str(exc)) from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ApiError(400, "invalid_json", _TOO_DEEP)
    return value


def _invalid_params(exc: ValidationError) -> ApiError:
    return ApiError(422, "invalid_params", describe_validation_error(exc))


def parse_params(model: type[P], body: bytes) -> P:
    """Validate a JSON object body against ``model``; an empty body means no parameters."""
    return parse_params_as(model, body)


class GroupRequest(BaseModel):
    """``POST /groups/{name}``: ``count`` members with the same ``params``, or one member
    per object of ``tasks``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    count: WholeNumber | None = Field(None, ge=1, description="How many members to start.")
    params: dict[str, Any] | None = Field(
        None, description="Every member's parameters (with count; default: the task's own)."
    )
    tasks: list[dict[str, Any]] | None = Field(
        None, min_length=1, description="One member per object: each one's parameters."
    )

    @model_validator(mode="after")
    def _one_way(self) -> GroupRequest:
        if self.count is None and self.tasks is None:
            raise ValueError("give count (with params) or tasks: the group's members")
        if self.count is not None and self.tasks is not None:
            raise ValueError("give count (with params) or tasks, not both")
        if self.tasks is not None and self.params is not None:
            raise ValueError("params goes with count; with tasks, each object is one's params")
        return self


def parse_group(model: type[P], body: bytes, max_size: int) -> list[P]:
    """Validate a group request: at most ``max_size`` members, each one's parameters
    against ``model``; an error names the member (``tasks.3.total: ...``)."""
    request = parse_params_as(GroupRequest, body)
    size = request.count if request.tasks is None else len(request.tasks)
    assert size is not None
    if size > max_size:
        raise ApiError(
            422, "invalid_params", f"a group may have at most {max_size} members, got {size}"
        )
    if request.tasks is None:
        # The same parameters for every member: checked once.
        return [_member(model, request.params or {}, "params")] * size
    return [_member(model, values, f"tasks.{index}") for index, values in enumerate(request.tasks)]


def _member(model: type[P], values: dict[str, Any], place: str) -> P:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(item) for item in (place, *problem['loc']))}: {problem['msg']}"
            for problem in exc.errors(include_url=False)
        ]
        raise ApiError(422, "invalid_params", "; ".join(problems)) from None


def parse_params_as(model: type[Q], body: bytes) -> Q:
    """Validate a JSON object body against any model (400 when it is not JSON)."""
    if not body.strip():
        body = b"{}"
    # The same strict reading as every other body first: pydantic's own reader would
    # take NaN and 1e400, which /process-and-email/ (and JSON) refuse.
    decode_json(body)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        for problem in exc.errors(include_url=False):
            if problem["type"] == "json_invalid":
                raise _not_json(str(problem.get("ctx", {}).get("error", ""))) from None
        raise _invalid_params(exc) from None


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
