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
import time
from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from taskcast.api.errors import ApiError
from taskcast.api.validation import parse_task_id
from taskcast.auth import bearer
from taskcast.groups import GroupStatus, GroupTally
from taskcast.ids import OWNER_RULE, is_owner
from taskcast.live.protocol import feed_key
from taskcast.liveness import is_stalled
from taskcast.state import AppState
from taskcast.status import Status, decode_status
from taskcast.tokens import TOKEN_VERSION
from taskcast_celery.owners import OwnerError, Ownership, check_owner, check_tags

# RFC 6750: a 401 names the scheme that would be accepted.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskcast"'}

WORK_REFUSED = "an API key is required: Authorization: Bearer <key>"
# A feed token that tries to start work (Guard.START), refused for one of three reasons.
FEED_TOKEN_OWNER_MISSING = (
    "a feed token starts tasks only as its owner: name it in the query, ?owner=<owner>"
)
FEED_TOKEN_OTHER_OWNER = (
    "Authorization holds no API key, nor the feed token of {owner!r}: a feed token starts "
    "tasks only as the owner it was signed for"
)
FEED_TOKEN_MAY_NOT_START = (
    "a feed token may not start tasks here (TASKCAST_FEED_TOKENS_MAY_START is off): "
    "an API key is required"
)


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
    # Read the owner the path's {owner} names (its history): its feed token, or an API key.
    FEED = "feed"
    # Start work, maybe as an owner (?owner=): what WORK needs; and where
    # TASKCAST_FEED_TOKENS_MAY_START is on, the feed token of the owner named does too.
    START = "start"


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
            if guard is Guard.START:
                authorize_start(request)
            if guard is Guard.FEED:
                require_feed(request, parse_owner(request.path_params["owner"]))
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
    refuse_foreign_page(request)
    if not app_state(request).auth.may_dispatch(bearer(request.headers.get("authorization"))):
        raise ApiError(401, "unauthorized", WORK_REFUSED, CHALLENGE)


def refuse_foreign_page(request: Request) -> None:
    """403 for a request from a page of another site (CSRF), whatever the auth settings."""
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


def authorize_start(request: Request) -> None:
    """Whether the caller may start work, maybe as the owner ``?owner=`` names: what
    ``authorize_work`` asks; where keys are set and the caller has none, a feed token
    for exactly that owner, if TASKCAST_FEED_TOKENS_MAY_START is on (403 naming why
    when a live token is not enough; 401 for anything else)."""
    refuse_foreign_page(request)
    state = app_state(request)
    credential = bearer(request.headers.get("authorization"))
    if state.auth.may_dispatch(credential):
        return
    # No API key where keys are set. Only a feed token may still do: one that is not
    # even shaped as a live token is no credential at all (401).
    if credential is None or not state.auth.tokens_required or not _live_token(credential):
        raise ApiError(401, "unauthorized", WORK_REFUSED, CHALLENGE)
    owner = request.query_params.get("owner")
    if owner is None:
        raise ApiError(403, "forbidden_owner", FEED_TOKEN_OWNER_MISSING)
    # (A token names no owner: it is checked against the one the query names, exactly,
    # so user:4's token never starts anything as user:42.)
    if not is_owner(owner) or not state.auth.may_watch(feed_key(owner), credential, None):
        raise ApiError(403, "forbidden_owner", FEED_TOKEN_OTHER_OWNER.format(owner=owner[:130]))
    if not state.settings.feed_tokens_may_start:
        raise ApiError(403, "forbidden_owner", FEED_TOKEN_MAY_NOT_START)


def _live_token(credential: str) -> bool:
    """Whether ``credential`` has a signed token's shape (``v1.<expiry>.<MAC>``) and an
    expiry still ahead: a token for something else than was asked (403), as opposed to a
    wrong or expired credential (401)."""
    version, _, rest = credential.partition(".")
    expires, _, mac = rest.partition(".")
    return (
        version == TOKEN_VERSION
        and expires.isascii()
        and expires.isdigit()
        and int(expires) > time.time()
        and bool(mac)
    )


def ownership_of(request: Request) -> Ownership | None:
    """The owner and tags a dispatch's query gives (``?owner=user:42&tag=a&tag=b``), each
    checked (422 ``invalid_owner`` saying why); None when it names no owner. They travel
    in the query, so that a task's own parameters (the JSON body) stay the task's."""
    given = request.query_params.getlist("owner")
    tags = request.query_params.getlist("tag")
    if len(given) > 1:
        raise ApiError(422, "invalid_owner", f"give one owner, got {len(given)}")
    if not given:
        if tags:
            raise ApiError(422, "invalid_owner", "tags go with an owner: ?owner=<owner>&tag=<tag>")
        return None
    try:
        return Ownership(check_owner(given[0]), check_tags(tags))
    except OwnerError as exc:
        raise ApiError(422, "invalid_owner", str(exc)) from None


def parse_owner(raw: str) -> str:
    """An owner from a path, as taskcast takes them, or 422 ``invalid_owner`` before it can
    become a Redis key."""
    if not is_owner(raw):
        shown = raw if len(raw) <= 64 else raw[:64] + "..."
        raise ApiError(422, "invalid_owner", f"an owner is {OWNER_RULE}, got {shown!r}")
    return raw


def require_feed(request: Request, owner: str) -> None:
    """401 unless the caller may read ``owner``'s tasks: its feed token (``?token=`` or
    Bearer), or an API key, when tokens are on. A task's watch token never does: it is
    bound to a task id, and a feed token to ``feed:`` and the owner, exactly."""
    auth = app_state(request).auth
    if not auth.tokens_required:
        return  # Anyone may, as for reading a task.
    token = request.query_params.get("token")
    if not auth.may_watch(feed_key(owner), token, bearer(request.headers.get("authorization"))):
        raise ApiError(401, "unauthorized", watch_refused("feed"), CHALLENGE)


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
