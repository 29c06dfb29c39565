"""Who may do what, and reading what they may read: in one place for every endpoint.

Each HTTP route declares its guard once (``guarded``): the route enforces it before its
endpoint runs, and ``/openapi.json`` documents it from the same declaration. WebSocket
connections ask the same questions (``may_watch``) where their protocol puts them: in
the handshake of ``/ws/tasks|groups/{id}``, in each subscribe of ``/ws``. Every refusal
is worded here, once.

Endpoints import this module (and the live layer), never each other.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from taskcast.api.errors import ApiError
from taskcast.api.validation import parse_task_id
from taskcast.auth import bearer
from taskcast.groups import GroupStatus, GroupTally
from taskcast.liveness import is_stalled
from taskcast.state import AppState
from taskcast.status import Status, decode_status

# RFC 6750: a 401 names the scheme that would be accepted.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskcast"'}

WORK_REFUSED = "an API key is required: Authorization: Bearer <key>"


def watch_refused(what: str) -> str:
    """Why a watch was refused: the same words whether or not the task (or group) exists."""
    return (
        f"the {what}'s watch token (?token=, or the subscribe's token) or an API key "
        "(Authorization: Bearer) is required; tokens expire"
    )


def app_state(conn: HTTPConnection) -> AppState:
    """What the lifespan opened for this process."""
    state: AppState = conn.app.state.taskcast
    return state


class Guard(enum.Enum):
    """What a route asks of its caller."""

    OPEN = "open"  # anyone
    WORK = "work"  # start work: a page of this site, and an API key where keys are set
    WATCH = "watch"  # read the task or group the path names: its token, or an API key
    # Cancel: what starting work needs and what watching needs; an API key covers both,
    # and with tokens but no keys the task's token lets its holder cancel it.
    CANCEL = "cancel"
    # Watch each of several ids, each with its own token (``/sse``): the endpoint refuses
    # each id alone, so one missing token does not close the others.
    WATCH_EACH = "watch_each"


class GuardedRoute(Route):
    """A route that enforces its guard before its endpoint, and declares it for the
    OpenAPI document."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[[Request], Awaitable[Response]],
        *,
        method: str,
        guard: Guard,
        include_in_schema: bool = True,
    ) -> None:
        self.guard = guard
        # The id the path names, for a watch: "task" for {task_id}, "group" for {group_id}.
        what = "group" if "{group_id}" in path else "task"

        async def enforcing(request: Request) -> Response:
            if guard is Guard.WORK or guard is Guard.CANCEL:
                authorize_work(request)
            if guard is Guard.WATCH or guard is Guard.CANCEL:
                watched_id = parse_task_id(request.path_params[f"{what}_id"], what)
                require_watch(request, watched_id, what)
            return await endpoint(request)

        super().__init__(
            path,
            endpoint if guard is Guard.OPEN or guard is Guard.WATCH_EACH else enforcing,
            methods=[method],
            name=endpoint.__name__,
            include_in_schema=include_in_schema,
        )


def guarded(
    path: str,
    endpoint: Callable[[Request], Awaitable[Response]],
    method: str = "GET",
    guard: Guard = Guard.OPEN,
    *,
    include_in_schema: bool = True,
) -> GuardedRoute:
    """A route with its guard."""
    return GuardedRoute(
        path, endpoint, method=method, guard=guard, include_in_schema=include_in_schema
    )


def authorize_work(request: Request) -> None:
    """Whether the caller may start or cancel work: 403 for a page of another site (CSRF,
    whatever the auth settings), then 401 without an API key where keys are set."""
    state = app_state(request)
    foreign = state.sites.foreign_page(request.headers)
    if foreign is not None:
        state.metrics.foreign_refused.inc()
        raise ApiError(
            403,
            "forbidden_origin",
            f"{foreign}; a page of another site may start or cancel work only when "
            "TASKCAST_ALLOWED_ORIGINS lists its origin",
        )
    if not state.auth.may_dispatch(bearer(request.headers.get("authorization"))):
        raise ApiError(401, "unauthorized", WORK_REFUSED, CHALLENGE)


def may_watch(conn: HTTPConnection, watched_id: str, token: str | None) -> bool:
    """Whether the caller may follow ``watched_id`` with ``token``, or with an API key
    in its ``Authorization`` header (in a WebSocket's handshake: never in a frame)."""
    auth = app_state(conn).auth
    if not auth.tokens_required:
        return True  # Anyone may: not even the header needs parsing.
    return auth.may_watch(watched_id, token, bearer(conn.headers.get("authorization")))


def require_watch(request: Request, watched_id: str, what: str = "task") -> None:
    """401 unless the caller may read the task (or group: ``what``): its token, or an API
    key, when tokens are on. Decided before anything is read: a known and an unknown id
    get the same answer."""
    if not app_state(request).auth.tokens_required:
        return  # Anyone may: not even the query string needs parsing.
    if not may_watch(request, watched_id, request.query_params.get("token")):
        raise ApiError(401, "unauthorized", watch_refused(what), CHALLENGE)


async def read_status(request: Request, task_id: str) -> Status:
    """The status of a known task; 404 ``unknown_task`` without a record; 503
    ``record_missing`` while the record is missing but its worker still beats (Redis
    lost it, and the worker writes it again: the hub waits for that, so REST does too)."""
    state = app_state(request)
    raw, beat, now_ms = await state.store.read_one(task_id)
    if raw is None:
        if state.hub.worker_alive(beat, now_ms):
            raise ApiError(
                503,
                "record_missing",
                f"the record of task {task_id} is missing while its worker still runs it; "
                "it is written again at its next change: retry",
                {"Retry-After": "1"},
            )
        raise ApiError(404, "unknown_task", f"no task with id {task_id}")
    status = decode_status(task_id, raw)
    status["stalled"] = is_stalled(status["state"], beat, now_ms, state.settings.stall_after)
    return status


async def read_members(request: Request, group_id: str) -> tuple[str, ...]:
    """A known group's member ids, or 404 ``unknown_group``."""
    members = await app_state(request).group_members(group_id)
    if members is None:
        raise ApiError(404, "unknown_group", f"no group with id {group_id}")
    return members


async def read_group_status(request: Request, group_id: str) -> GroupStatus:
    """A known group's status, from one read of every member's record and heartbeat."""
    state = app_state(request)
    members = await read_members(request, group_id)
    reading = await state.store.read_many(members, members)
    tally = GroupTally(group_id, members)
    for task_id, raw, beat in zip(members, reading.records, reading.beats, strict=True):
        status = None if raw is None else decode_status(task_id, raw)
        # (Redis's clock is there whenever a member is: it came with their heartbeats.)
        if status is not None and reading.now_ms is not None:
            stall_after = state.settings.stall_after
            status["stalled"] = is_stalled(status["state"], beat, reading.now_ms, stall_after)
        tally.update(task_id, status, raw)
    return tally.status()
