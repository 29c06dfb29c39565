"""An owner's history over REST: ``GET /feeds/{owner}/tasks`` (``taskcast.history``).

Its live counterpart is ``/ws``'s ``{"op": "subscribe", "feed": owner}``; both are opened
by the owner's feed token (``taskcast.sign_feed_token``) or an API key where the service
signs tokens (``Guard.FEED``).
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from taskcast.api.errors import ApiError, describe_validation_error
from taskcast.api.guards import Guard, app_state, guarded, parse_owner
from taskcast.api.queries import HistoryQuery
from taskcast.api.responses import json_response
from taskcast.history import HistoryFilter, decode_cursor, read_history

FEED_TASKS = "/feeds/{owner}/tasks"


def _query(request: Request) -> HistoryQuery:
    """The listing's query, checked: 422 ``invalid_query`` naming what is wrong (a
    parameter given twice too, which would otherwise silently count once)."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen:
            raise ApiError(422, "invalid_query", f"{name}: given more than once")
        seen.add(name)
    try:
        return HistoryQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise ApiError(422, "invalid_query", describe_validation_error(exc)) from None


async def feed_tasks(request: Request) -> Response:
    """The owner's tasks, newest first, a page at a time."""
    owner = parse_owner(request.path_params["owner"])
    query = _query(request)
    after = None
    if query.cursor is not None:
        after = decode_cursor(query.cursor)
        if after is None:
            raise ApiError(422, "invalid_query", "cursor: not a cursor this service gave")
    state = app_state(request)
    names = None
    if query.name is not None:
        # Either name of an exposed task: the one clients start it by, and Celery's.
        exposure = state.served.tasks.get(query.name)
        names = frozenset({query.name} | ({exposure.task_name} if exposure else set()))
    where = HistoryFilter(state=query.state, names=names, tag=query.tag, since_ms=query.since)
    page = await read_history(
        state.redis, state.store.prefix, owner, limit=query.limit, after=after, where=where
    )
    return json_response(page, headers={"Cache-Control": "no-store"})


routes = [guarded(FEED_TASKS, feed_tasks, guard=Guard.FEED)]
