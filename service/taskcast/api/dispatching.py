"""Starting a task, and what a started task answers: where it is read once (REST) and
followed live (WebSocket), with its watch token when tokens are on."""

from __future__ import annotations

from typing import Annotated, NotRequired
from urllib.parse import urlencode

from pydantic import BaseModel, Field
from starlette.requests import Request

# pydantic reads TypedDicts (for their JSON Schema) only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from taskcast.api import paths
from taskcast.api.errors import ApiError
from taskcast.api.guards import app_state
from taskcast.dispatch import DispatchError
from taskcast.status import UuidText
from taskcast_celery.expose import Exposure
from taskcast_celery.owners import Ownership

# A failed publish, as the client hears of it (the reason goes to the log).
QUEUE_FAILED = "could not queue the {}: the broker or the result store is unavailable; retry"


def watch_token(request: Request, watched_id: str) -> dict[str, str]:
    """``{"token": ...}`` for a dispatch reply when tokens are on, else nothing."""
    token = app_state(request).auth.token(watched_id)
    return {} if token is None else {"token": token}


_TOKEN = Field(
    description="the watch token, present when the service signs them (TASKCAST_SECRET); "
    "status_url and ws_url carry it too"
)
_OWNER = Field(description="whose task it is: the ?owner= of the dispatch, when given")
_TAGS = Field(description="its tags (?tag=), with its owner")


class TaskLinks(TypedDict):
    """Where a started (or cancelled) task is read once (REST) and followed (WebSocket)."""

    task_id: UuidText
    status_url: str
    ws_url: str
    token: NotRequired[Annotated[str, _TOKEN]]
    owner: NotRequired[Annotated[str, _OWNER]]
    tags: NotRequired[Annotated[list[str], _TAGS]]


class GroupLinks(TypedDict):
    """Where a started group is read once (REST) and followed (WebSocket), and its members."""

    group_id: UuidText
    task_ids: list[UuidText]
    status_url: str
    ws_url: str
    token: NotRequired[Annotated[str, _TOKEN]]
    owner: NotRequired[Annotated[str, _OWNER]]
    tags: NotRequired[Annotated[list[str], _TAGS]]


class GroupCancelled(GroupLinks):
    """A cancelled group: its links, and the members that were cancelled (those that had
    not ended)."""

    revoked: list[UuidText]


def _links(request: Request, status_path: str, ws_path: str, **ids: str) -> tuple[str, str, str]:
    """A task's or group's REST and WebSocket URLs, with its watch token (in both URLs,
    and returned third: "" when tokens are off). They keep the request's scheme, host and
    root path: the prefix the service is mounted under, or the one uvicorn's
    ``--root-path`` names behind a proxy that strips it (``request.base_url`` would drop
    a mount's prefix: it is the outermost app's). The ids are checked UUIDs: nothing in
    them needs quoting."""
    (watched_id,) = ids.values()
    token = app_state(request).auth.token(watched_id)
    query = "" if token is None else "?" + urlencode({"token": token})
    url = request.url
    root = f"{url.netloc}{service_root(request)}"
    ws_scheme = "wss" if url.scheme in ("https", "wss") else "ws"
    http_scheme = "https" if url.scheme in ("https", "wss") else "http"
    status_url = f"{http_scheme}://{root}{status_path.format(**ids)}{query}"
    ws_url = f"{ws_scheme}://{root}{ws_path.format(**ids)}{query}"
    return status_url, ws_url, token or ""


def service_root(request: Request) -> str:
    """The path the service's own paths follow in this request's URL: "" at the root,
    else the mount's or proxy's prefix (``/jobs``), without a trailing slash."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def task_links(request: Request, task_id: str, ownership: Ownership | None = None) -> TaskLinks:
    """Where a client reads a task's status once (REST) and follows it live (WebSocket),
    with its watch token (in the reply, and in both URLs) when tokens are on; and whose
    it is, when the dispatch said."""
    status_url, ws_url, token = _links(request, paths.TASK_STATUS, paths.WS_TASK, task_id=task_id)
    links: TaskLinks = {"task_id": task_id, "status_url": status_url, "ws_url": ws_url}
    if token:
        links["token"] = token
    if ownership is not None:
        links["owner"], links["tags"] = ownership.owner, list(ownership.tags)
    return links


async def dispatch_task(
    request: Request, exposure: Exposure, params: BaseModel, ownership: Ownership | None = None
) -> str:
    """Publish a task with checked parameters (as ``ownership``'s, when given),
    answering 503 (and queueing nothing) when the broker is down."""
    state = app_state(request)
    try:
        task_id = await state.dispatcher.submit(exposure, exposure.kwargs(params), ownership)
    except DispatchError as exc:
        state.metrics.dispatched(exposure.name, "publish_failed")
        state.metrics.dispatch_redis_errors.inc()
        # What failed, and where (hosts, ports), is the operator's to read, in the log.
        raise ApiError(503, "broker_unavailable", QUEUE_FAILED.format("task")) from exc
    state.metrics.dispatched(exposure.name, "ok")
    return task_id


def group_links(
    request: Request, group_id: str, task_ids: list[str], ownership: Ownership | None = None
) -> GroupLinks:
    """A group's REST and WebSocket URLs, with its watch token when tokens are on, and
    its members' owner and tags when the dispatch gave them."""
    status_url, ws_url, token = _links(
        request, paths.GROUP_STATUS, paths.WS_GROUP, group_id=group_id
    )
    links: GroupLinks = {
        "group_id": group_id,
        "task_ids": task_ids,
        "status_url": status_url,
        "ws_url": ws_url,
    }
    if token:
        links["token"] = token
    if ownership is not None:
        links["owner"], links["tags"] = ownership.owner, list(ownership.tags)
    return links
