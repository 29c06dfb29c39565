"""A Python client for taskcast, for scripts and services: submit, read, and watch tasks
and groups of tasks.

```python
async for status in watch("http://127.0.0.1:8000", task_id):
    print(status["state"], status["progress"])
```

``submit_group``, ``get_group`` and ``watch_group`` do the same for a group (a batch of
tasks started together, followed as one status object). ``submit(..., owner=...)`` starts
a task of an owner; ``get_history`` lists an owner's tasks and ``watch_feed`` follows them
all live.

Where the service has auth on (docs/security.md), ``submit`` and ``submit_group`` take an
``api_key`` and return the watch ``token``, which ``get_status`` and ``watch`` (or
``get_group`` and ``watch_group``) take, or an API key, which reads anything; both travel
in the ``Authorization`` header, never in a URL.

Every failure is a :class:`TaskcastError`; its subclasses say which kind. The client
imports nothing of the service's own (no Celery, no Redis): it speaks only the public
REST and WebSocket protocol of docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

# Seconds httpx waits for each step of a request (connect, send, each read). Callers that
# want a tighter bound on a whole call wrap it in ``asyncio.timeout``.
_HTTP_TIMEOUT = 10.0

# Largest status a watch takes: a final one carries the task's whole result, which may
# be far larger than websockets' default of 1 MiB; still bounded, against a hostile end.
_MAX_FRAME_BYTES = 256 * 1024 * 1024

# Close codes of /ws/tasks/{id} and /ws/groups/{id} (taskcast/live/protocol.py) that end a
# watch instead of a retry.
_CLOSE_UNAUTHORIZED = 4401
_CLOSE_UNKNOWN_TASK = 4404
_CLOSE_INVALID_TASK_ID = 4422


class TaskcastError(Exception):
    """Base of every error this client raises; the message says what went wrong."""


class ServiceUnavailable(TaskcastError):
    """The service could not be reached, did not answer in time, or answered 5xx."""


class Unauthorized(TaskcastError):
    """The call needs credentials it did not have, or had wrong or expired ones
    (HTTP 401, WebSocket ``unauthorized`` / close 4401)."""


class TaskNotFound(TaskcastError):
    """No task has this id (HTTP 404, WebSocket ``unknown_task`` / close 4404)."""


class InvalidTaskId(TaskcastError):
    """The id is not a task id, that is not a UUID (HTTP 422, WebSocket close 4422)."""


class GroupNotFound(TaskcastError):
    """No group has this id (HTTP 404, WebSocket ``unknown_group`` / close 4404)."""


class InvalidGroupId(TaskcastError):
    """The id is not a group id, that is not a UUID (HTTP 422, WebSocket close 4422)."""


class UnknownTaskName(TaskcastError):
    """``submit`` or ``submit_group`` named a task the service does not offer (HTTP 404)."""


class InvalidParams(TaskcastError):
    """``submit`` or ``submit_group`` gave parameters the task refuses, or a group request
    the service refuses (HTTP 400, 413 or 422); or ``get_history`` a query it refuses."""


class InvalidOwner(TaskcastError):
    """An owner or tag the service does not take (HTTP 422 ``invalid_owner``, WebSocket
    ``invalid_feed``): 1 to 128 characters of letters, digits and ``_.:@-``."""


class Forbidden(TaskcastError):
    """Credentials the service understood but that do not allow the call (HTTP 403): a
    feed token starting a task as another owner, or where feed tokens may not start any."""


class AlreadyEnded(TaskcastError):
    """``cancel`` or ``cancel_group`` named a task (every member of a group) that had
    already ended (HTTP 409)."""


def _base(base_url: str) -> str:
    if not base_url.startswith(("http://", "https://")):
        raise TaskcastError(f"the service URL must start with http:// or https://: {base_url!r}")
    return base_url.rstrip("/")


def _segment(value: str) -> str:
    # Quoted whole, so an id like "../healthz" stays one path segment and the service
    # answers it as malformed instead of serving another route.
    return quote(value, safe="")


def _detail(response: httpx.Response) -> tuple[str, str]:
    """The service's error code and detail, or what can be said of a foreign answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body.get("error", "")), body["detail"]
    return "", f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _open(url: str, headers: dict[str, str], open_timeout: float) -> connect:
    """A WebSocket to the service, as every follower opens one: no compression (small
    JSON frames), frames no larger than the service sends."""
    return connect(
        url,
        additional_headers=headers,
        open_timeout=open_timeout,
        compression=None,
        max_size=_MAX_FRAME_BYTES,
    )


class _Backoff:
    """Between attempts to reach a followed stream again: a random wait between half
    and all of ``retry_initial * 2**n``, at most ``retry_max`` (so many clients spread
    out), until ``give_up_after`` seconds have passed without a working connection."""

    def __init__(self, give_up_after: float, retry_initial: float, retry_max: float) -> None:
        self.give_up_after = give_up_after
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.failures = 0
        self.offline_since = time.monotonic()

    async def wait(self, reason: str, delivered: bool) -> None:
        """Wait before the next attempt (counted afresh when the last one delivered
        something); ServiceUnavailable, naming ``reason``, once it is time to give up."""
        if delivered:
            self.failures, self.offline_since = 0, time.monotonic()
        remaining = self.offline_since + self.give_up_after - time.monotonic()
        if remaining <= 0:
            raise ServiceUnavailable(f"{reason}; gave up after {self.give_up_after:g} s")
        ceiling = min(self.retry_max, self.retry_initial * 2**self.failures)
        self.failures += 1
        await asyncio.sleep(min(remaining, random.uniform(ceiling / 2, ceiling)))


def _connect_failure(exc: BaseException, base_url: str, url: str) -> str:
    """Why a WebSocket could not be opened, to try again later; raises TaskcastError for
    what trying again cannot change (not a service URL, a refusal below HTTP 500)."""
    if isinstance(exc, InvalidURI):
        raise TaskcastError(f"not a service URL: {base_url!r} ({exc})") from None
    if isinstance(exc, InvalidStatus):
        status_code = exc.response.status_code
        if status_code < 500:
            raise TaskcastError(f"{url} refused the WebSocket: HTTP {status_code}") from None
        return f"{url} answered HTTP {status_code}"
    return f"cannot reach {url}: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    """The innermost cause, in words: "Connection refused", not "All connection attempts
    failed", which is all that httpx's own message says."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


# How each call's refusals become errors: by HTTP status and the service's error code
# (None: any code). A 404 without taskcast's code is another server, or a wrong URL.
_Refusals = dict[tuple[int, str | None], type[TaskcastError]]


@dataclass(frozen=True, slots=True)
class _Subject:
    """What is read or watched, a task or a group: the words the service uses for it
    (in paths, message types and error codes), and the errors its refusals become."""

    word: str  # "task": /tasks/{id}, /ws/tasks/{id}, unknown_task, invalid_task_id
    message_type: str  # the "type" of the WebSocket messages that carry its status
    not_found: type[TaskcastError]
    invalid_id: type[TaskcastError]

    def url(self, base_url: str, last: str) -> str:
        """Its REST URL, ending in ``last``: an id to read, or a task name to start."""
        return f"{_base(base_url)}/{self.word}s/{_segment(last)}"

    def ws_url(self, base_url: str, watched_id: str) -> str:
        scheme, rest = _base(base_url).split("://", 1)
        ws = "wss" if scheme == "https" else "ws"
        return f"{ws}://{rest}/ws/{self.word}s/{_segment(watched_id)}"

    @property
    def refusals(self) -> _Refusals:
        """How a REST read of it is refused."""
        return {(404, f"unknown_{self.word}"): self.not_found, (422, None): self.invalid_id}

    @property
    def errors(self) -> dict[str, type[TaskcastError]]:
        """The WebSocket error codes that end a watch of it, and the errors they become."""
        return {
            f"unknown_{self.word}": self.not_found,
            f"invalid_{self.word}_id": self.invalid_id,
            "unauthorized": Unauthorized,
        }


_TASK = _Subject("task", "status", TaskNotFound, InvalidTaskId)
_GROUP = _Subject("group", "group", GroupNotFound, InvalidGroupId)
_SUBMIT_REFUSALS: _Refusals = {
    (404, "unknown_task_name"): UnknownTaskName,
    (422, "invalid_owner"): InvalidOwner,
    (403, "forbidden_owner"): Forbidden,
    **dict.fromkeys([(400, None), (413, None), (422, None)], InvalidParams),
}
_HISTORY_REFUSALS: _Refusals = {
    (422, "invalid_owner"): InvalidOwner,
    (422, None): InvalidParams,
}


def _authorization(credential: str | None) -> dict[str, str]:
    return {} if credential is None else {"Authorization": f"Bearer {credential}"}


async def _call(
    method: str,
    url: str,
    expected: int,
    refusals: _Refusals,
    body: object = None,
    credential: str | None = None,
    query: list[tuple[str, str]] | None = None,
) -> Any:
    """The JSON body of the ``expected`` answer; anything else raised as a TaskcastError."""
    try:
        async with httpx.AsyncClient(timeout=_HTTP_TIMEOUT) as http:
            response = await http.request(
                method,
                url,
                json=body,
                headers=_authorization(credential),
                params=tuple(query or ()),
            )
    except httpx.TimeoutException:
        raise ServiceUnavailable(f"{url} did not answer within {_HTTP_TIMEOUT:g} s") from None
    except httpx.TransportError as exc:
        raise ServiceUnavailable(f"cannot reach {url}: {_reason(exc)}") from None
    if response.status_code == expected:
        return response.json()
    code, detail = _detail(response)
    if response.status_code >= 500:
        raise ServiceUnavailable(f"{url} answered: {detail}")
    if response.status_code == 401:
        raise Unauthorized(detail)
    refusal = refusals.get((response.status_code, code)) or refusals.get(
        (response.status_code, None)
    )
    if refusal is not None:
        raise refusal(detail)
    raise TaskcastError(f"unexpected answer from {method} {url}: {detail}")


async def _read(subject: _Subject, base_url: str, watched_id: str, credential: str | None) -> Any:
    return await _call(
        "GET", subject.url(base_url, watched_id), 200, subject.refusals, credential=credential
    )


async def get_status(
    base_url: str, task_id: str, *, token: str | None = None, api_key: str | None = None
) -> dict[str, Any]:
    """The task's status object (``GET /tasks/{id}``), read with the task's watch
    ``token`` or an ``api_key`` where the service wants one.

    Raises TaskNotFound, InvalidTaskId, Unauthorized, ServiceUnavailable, or
    TaskcastError for an answer that is not taskcast's.
    """
    status: dict[str, Any] = await _read(_TASK, base_url, task_id, api_key or token)
    return status


async def get_group(
    base_url: str, group_id: str, *, token: str | None = None, api_key: str | None = None
) -> dict[str, Any]:
    """The group's status object (``GET /groups/{id}``): its state, how many members are
    done of its ``size``, how many are in each state, the summed progress, the members
    that failed or were cancelled, and those whose worker went silent. Read with the
    group's watch ``token`` or an ``api_key`` where the service wants one.

    Raises GroupNotFound, InvalidGroupId, Unauthorized, ServiceUnavailable, or
    TaskcastError for an answer that is not taskcast's.
    """
    group: dict[str, Any] = await _read(_GROUP, base_url, group_id, api_key or token)
    return group


async def list_tasks(base_url: str) -> list[dict[str, Any]]:
    """The tasks the service lets clients start (``GET /tasks``): a list of
    ``{"name", "summary", "params"}``, ``params`` being the JSON Schema of the task's
    parameters.

    Raises ServiceUnavailable, or TaskcastError for an answer that is not taskcast's.
    """
    url = f"{_base(base_url)}/tasks"
    reply = await _call("GET", url, 200, {})
    tasks = reply.get("tasks") if isinstance(reply, dict) else None
    if not isinstance(tasks, list):
        raise TaskcastError(f"{url} does not answer as taskcast does")
    return tasks


def _owned(owner: str | None, tags: Sequence[str]) -> list[tuple[str, str]]:
    """A dispatch's owner and tags, as the query carries them (``?owner=&tag=&tag=``)."""
    if owner is None:
        if tags:
            raise InvalidOwner("tags go with an owner: give owner= too")
        return []
    if isinstance(tags, str):
        raise InvalidOwner("tags is a list of tags, not one string")
    return [("owner", owner), *(("tag", tag) for tag in tags)]


async def submit(
    base_url: str,
    name: str,
    params: dict[str, Any],
    *,
    api_key: str | None = None,
    owner: str | None = None,
    tags: Sequence[str] = (),
    token: str | None = None,
) -> dict[str, Any]:
    """Start task ``name`` with ``params`` (``POST /tasks/{name}``), with ``api_key``
    where the service wants one; as ``owner``'s task with ``tags`` when given (with an
    API key, or where the service has none; or with ``token``, the owner's feed token,
    where the service lets feed tokens start tasks).

    Returns ``{"task_id", "status_url", "ws_url"}``, plus ``"token"`` (the task's watch
    token) when the service signs them, and ``"owner"`` and ``"tags"`` when given.
    Raises UnknownTaskName, InvalidParams (with the service's explanation), InvalidOwner,
    Unauthorized, Forbidden, ServiceUnavailable (also when the service cannot reach its
    broker), or TaskcastError for an answer that is not taskcast's.
    """
    links: dict[str, Any] = await _call(
        "POST",
        _TASK.url(base_url, name),
        202,
        _SUBMIT_REFUSALS,
        params,
        credential=api_key or token,
        query=_owned(owner, tags),
    )
    return links


async def submit_group(
    base_url: str,
    name: str,
    *,
    count: int | None = None,
    params: dict[str, Any] | None = None,
    tasks: list[dict[str, Any]] | None = None,
    api_key: str | None = None,
    owner: str | None = None,
    tags: Sequence[str] = (),
    token: str | None = None,
) -> dict[str, Any]:
    """Start a group of task ``name`` (``POST /groups/{name}``): ``count`` members that
    all take ``params`` (the task's defaults without), or one member per parameter object
    in ``tasks``; with ``api_key`` where the service wants one; every member ``owner``'s,
    with ``tags``, when given (as for ``submit``, ``token`` being the owner's feed token).

    Returns ``{"group_id", "task_ids", "status_url", "ws_url"}``, plus ``"token"`` (the
    group's watch token) when the service signs them. Raises UnknownTaskName,
    InvalidParams (with the service's explanation: a member's parameters, too many
    members, or ``count`` and ``tasks`` both or neither given), Unauthorized,
    ServiceUnavailable, or TaskcastError for an answer that is not taskcast's.
    """
    # Only what was given: the service says what is missing or does not go together.
    given = {"count": count, "params": params, "tasks": tasks}
    body = {key: value for key, value in given.items() if value is not None}
    reply: dict[str, Any] = await _call(
        "POST",
        _GROUP.url(base_url, name),
        202,
        _SUBMIT_REFUSALS,
        body,
        credential=api_key or token,
        query=_owned(owner, tags),
    )
    return reply


async def get_history(
    base_url: str,
    owner: str,
    *,
    state: str | None = None,
    name: str | None = None,
    tag: str | None = None,
    since: int | None = None,
    limit: int | None = None,
    cursor: str | None = None,
    token: str | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """A page of ``owner``'s tasks, newest first (``GET /feeds/{owner}/tasks``):
    ``{"tasks": [...], "next_cursor": ...}``. Each task has ``task_id``, ``name``,
    ``state``, ``final``, ``owner``, ``tags``, ``sent_at``, ``started_at``,
    ``finished_at`` (Unix ms), ``error`` and ``result`` (cut to 2 KiB). Only those in
    ``state``, of ``name``, with ``tag``, sent at ``since`` (Unix ms) or later; at most
    ``limit`` (1 to 200, 50 by default); from ``cursor``, the ``next_cursor`` of the page
    before (None when nothing older is listed; a page may be short and have one).

    Read with the owner's feed ``token`` or an ``api_key`` where the service signs tokens.
    Raises InvalidOwner, InvalidParams (a query the service refuses), Unauthorized,
    ServiceUnavailable, or TaskcastError for an answer that is not taskcast's.
    """
    given = {
        "state": state,
        "name": name,
        "tag": tag,
        "since": since,
        "limit": limit,
        "cursor": cursor,
    }
    query = [(key, str(value)) for key, value in given.items() if value is not None]
    url = f"{_base(base_url)}/feeds/{_segment(owner)}/tasks"
    page: dict[str, Any] = await _call(
        "GET", url, 200, _HISTORY_REFUSALS, credential=api_key or token, query=query
    )
    if not isinstance(page, dict) or not isinstance(page.get("tasks"), list):
        raise TaskcastError(f"{url} does not answer as taskcast does")
    return page


def _without_estimates(status: dict[str, Any]) -> dict[str, Any]:
    """A status as compared for "the same one again": ``rate`` and ``eta_s`` are
    estimates that the replica sending them measures for each connection afresh (null in
    a new connection's first status), so a status that differs only in them says
    nothing new."""
    progress = status.get("progress")
    if not isinstance(progress, dict):
        return status
    return {**status, "progress": {**progress, "rate": None, "eta_s": None}}


def _raise_for_error(subject: _Subject, message: dict[str, Any]) -> None:
    detail = str(message.get("detail", "error"))
    error = subject.errors.get(str(message.get("code")))
    if error is not None:
        raise error(detail)
    raise TaskcastError(f"the service refused the watch: {detail}")


def watch(
    base_url: str,
    task_id: str,
    *,
    token: str | None = None,
    api_key: str | None = None,
    give_up_after: float = 30.0,
    retry_initial: float = 0.5,
    retry_max: float = 10.0,
    open_timeout: float = 10.0,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the task's status objects: the current one at once, then every change,
    ending after the final one (SUCCESS, FAILURE or REVOKED).

    It follows ``/ws/tasks/{id}`` rather than the multiplexed ``/ws``: the socket *is*
    the subscription, so a reconnect only has to open it again (nothing to resubscribe,
    no other task's messages to filter), and the service reports an unknown or
    malformed id with its own close code.

    A connection that drops before the final status (a server restart's 1012, a
    network failure, a slow-client 4408, even a 1000 that came without a final) is
    opened again after a capped exponential backoff with jitter: a wait drawn between
    half and all of ``retry_initial * 2**n``, at most ``retry_max``, so many clients
    cut off together do not return in step. The new connection's first message is
    the task's status at that moment, so a final reached meanwhile is not missed.

    Statuses never go backwards, without comparing progress figures (a retried task
    legitimately counts again from 1): the service sends them in the order the result
    backend held them, and a new connection's snapshot is read (from the same Redis,
    whichever replica answers) after the last message of the one before, so it is never
    older than anything yielded. It can be the same status again: a repeat of the last
    one yielded is skipped, also one that differs from it only in ``rate`` and
    ``eta_s`` (estimates the new connection's replica measures afresh, null at first).

    ``token`` (the task's watch token) or ``api_key`` go in the handshake's
    ``Authorization`` header, where the service wants one.

    Raises TaskNotFound, InvalidTaskId or Unauthorized as the service reports them, and
    ServiceUnavailable after ``give_up_after`` seconds without a working connection
    (one that delivered a status). Close the generator to stop early (``break`` out of
    the loop, or wrap it in ``contextlib.aclosing`` to close the socket at once).
    """
    return _follow(
        _TASK, base_url, task_id, api_key or token,
        give_up_after, retry_initial, retry_max, open_timeout,
    )  # fmt: skip


def watch_group(
    base_url: str,
    group_id: str,
    *,
    token: str | None = None,
    api_key: str | None = None,
    give_up_after: float = 30.0,
    retry_initial: float = 0.5,
    retry_max: float = 10.0,
    open_timeout: float = 10.0,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the group's status objects: the current one at once, then every change,
    ending after the final one (every member ended: SUCCESS, FAILURE or REVOKED).

    It follows ``/ws/groups/{id}``, and behaves as ``watch`` does: it reconnects after
    the same backoff, the new connection's first message is the group as it is then,
    a repeat of the last group status yielded (estimates aside) is skipped, ``token``
    (the group's watch token) or ``api_key`` go in the ``Authorization`` header, and
    closing the generator stops it.

    Raises GroupNotFound, InvalidGroupId or Unauthorized as the service reports them,
    and ServiceUnavailable after ``give_up_after`` seconds without a working connection
    (one that delivered a group status).
    """
    return _follow(
        _GROUP, base_url, group_id, api_key or token,
        give_up_after, retry_initial, retry_max, open_timeout,
    )  # fmt: skip


async def _follow(
    subject: _Subject,
    base_url: str,
    watched_id: str,
    credential: str | None,
    give_up_after: float,
    retry_initial: float,
    retry_max: float,
    open_timeout: float,
) -> AsyncGenerator[dict[str, Any], None]:
    """The reconnecting watch behind ``watch`` and ``watch_group`` (``watch`` says how it
    behaves). An async generator that they return as it is, unwrapped, so that closing
    what they return closes the socket at once."""
    url = subject.ws_url(base_url, watched_id)
    headers = _authorization(credential)
    last: dict[str, Any] | None = None
    backoff = _Backoff(give_up_after, retry_initial, retry_max)
    while True:
        reason: str
        delivered = False
        try:
            async with _open(url, headers, open_timeout) as ws:
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("type") == "error":
                        _raise_for_error(subject, message)
                    if message.get("type") != subject.message_type:
                        continue
                    message.pop("type")
                    delivered = True
                    if last is not None and _without_estimates(message) == _without_estimates(last):
                        continue
                    last = message
                    yield message
                    if message["final"]:
                        return
            reason = f"the connection closed ({ws.close_code}) before the final status"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code == _CLOSE_UNKNOWN_TASK:
                raise subject.not_found(f"no {subject.word} with id {watched_id}") from None
            if code == _CLOSE_INVALID_TASK_ID:
                raise subject.invalid_id(
                    f"{subject.word} id must be a UUID, got {watched_id!r}"
                ) from None
            if code == _CLOSE_UNAUTHORIZED:
                raise Unauthorized(f"not allowed to watch {subject.word} {watched_id}") from None
            reason = f"the connection dropped ({code or 'no close frame'})"
        except (OSError, TimeoutError, InvalidURI, InvalidHandshake) as exc:
            reason = _connect_failure(exc, base_url, url)
        await backoff.wait(reason, delivered)


# Tasks a feed watch remembers the last status of, to skip repeats after a reconnect (the
# oldest forgotten first): far more than a feed follows at once (1,000 unfinished).
_FEED_MEMORY = 10_000


def watch_feed(
    base_url: str,
    owner: str,
    *,
    token: str | None = None,
    api_key: str | None = None,
    give_up_after: float = 30.0,
    retry_initial: float = 0.5,
    retry_max: float = 10.0,
    open_timeout: float = 10.0,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the status of every task of ``owner`` as it changes: first the current
    status of each of its unfinished tasks, then every status of every task of it, new
    ones included. A feed has no end: close the generator to stop.

    It subscribes on ``/ws`` (``{"op": "subscribe", "feed": owner, "token": token}``);
    ``token`` is the owner's feed token, ``api_key`` goes in the handshake. A dropped
    connection is opened again after the backoff of ``watch``, and the subscription
    resumes from the last ``feed`` answer's time (``since``): the finals of the tasks that
    ended meanwhile come then. A status the same as the last one yielded for its task
    (estimates aside), or any after its final, is skipped.

    Raises InvalidOwner, Unauthorized, and ServiceUnavailable after ``give_up_after``
    seconds without a working connection.
    """
    return _follow_feed(
        base_url, owner, token, api_key, give_up_after, retry_initial, retry_max, open_timeout
    )


async def _follow_feed(
    base_url: str,
    owner: str,
    token: str | None,
    api_key: str | None,
    give_up_after: float,
    retry_initial: float,
    retry_max: float,
    open_timeout: float,
) -> AsyncGenerator[dict[str, Any], None]:
    """The reconnecting feed behind ``watch_feed``."""
    scheme, rest = _base(base_url).split("://", 1)
    url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws"
    headers = _authorization(api_key)
    # The last status yielded of each task (its final too: nothing follows that).
    shown: dict[str, dict[str, Any]] = {}
    at: int | None = None
    backoff = _Backoff(give_up_after, retry_initial, retry_max)
    while True:
        reason: str
        delivered = False
        try:
            async with _open(url, headers, open_timeout) as ws:
                frame: dict[str, Any] = {"op": "subscribe", "feed": owner}
                if token is not None:
                    frame["token"] = token
                if at is not None:
                    frame["since"] = at
                await ws.send(json.dumps(frame))
                async for raw in ws:
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "error":
                        _raise_for_feed_error(owner, message)
                    if kind == "feed":
                        at, delivered = message.get("at", at), True
                        statuses = message.get("tasks") or []
                    elif kind == "status":
                        statuses = [message]
                    else:
                        continue
                    for status in statuses:
                        status.pop("type", None)
                        task_id = str(status.get("task_id"))
                        last = shown.pop(task_id, None)
                        if last is not None and (
                            last.get("final")
                            or _without_estimates(status) == _without_estimates(last)
                        ):
                            shown[task_id] = last
                            continue
                        shown[task_id] = status
                        if len(shown) > _FEED_MEMORY:
                            del shown[next(iter(shown))]
                        yield status
            reason = f"the connection closed ({ws.close_code})"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = f"the connection dropped ({code or 'no close frame'})"
        except (OSError, TimeoutError, InvalidURI, InvalidHandshake) as exc:
            reason = _connect_failure(exc, base_url, url)
        await backoff.wait(reason, delivered)


def _raise_for_feed_error(owner: str, message: dict[str, Any]) -> None:
    detail = str(message.get("detail", "error"))
    code = message.get("code")
    if code == "unauthorized":
        raise Unauthorized(detail)
    if code == "invalid_feed":
        raise InvalidOwner(detail)
    raise TaskcastError(f"the service refused the feed of {owner}: {detail}")


async def cancel(
    base_url: str, task_id: str, *, token: str | None = None, api_key: str | None = None
) -> dict[str, Any]:
    """Cancel a task (``DELETE /tasks/{id}``): a queued one never runs, a running one is
    stopped; it ends REVOKED. With ``api_key`` (or, where the service signs tokens but
    has no keys, the task's ``token``). Returns the task's links.

    Raises TaskNotFound, InvalidTaskId, Unauthorized, AlreadyEnded, ServiceUnavailable.
    """
    refusals = {**_TASK.refusals, (409, None): AlreadyEnded}
    reply: dict[str, Any] = await _call(
        "DELETE", _TASK.url(base_url, task_id), 202, refusals, credential=api_key or token
    )
    return reply


async def cancel_group(
    base_url: str, group_id: str, *, token: str | None = None, api_key: str | None = None
) -> dict[str, Any]:
    """Cancel every member of a group that has not ended (``DELETE /groups/{id}``).
    Returns the group's links and ``revoked``, the members cancelled.

    Raises GroupNotFound, InvalidGroupId, Unauthorized, AlreadyEnded, ServiceUnavailable.
    """
    refusals = {**_GROUP.refusals, (409, None): AlreadyEnded}
    reply: dict[str, Any] = await _call(
        "DELETE", _GROUP.url(base_url, group_id), 202, refusals, credential=api_key or token
    )
    return reply


class Client:
    """One service, and the API key to use with it: the functions of this module
    without repeating them.

    ::

        client = taskcast.Client("https://tasks.example.com", api_key=KEY)
        task = await client.submit("resize", {"image_id": 7})
        async for status in client.watch(task["task_id"]):
            print(status["state"], status["progress"])

    A ``token`` given to one call (a task's or group's watch token) is used for that call.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None) -> None:
        self.base_url = _base(base_url)
        self.api_key = api_key

    def __repr__(self) -> str:
        # Never the key itself: a repr ends up in logs.
        return f"Client({self.base_url!r}, api_key={'set' if self.api_key else None})"

    async def tasks(self) -> list[dict[str, Any]]:
        """The tasks the service lets clients start: see ``list_tasks``."""
        return await list_tasks(self.base_url)

    async def submit(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
        tags: Sequence[str] = (),
        token: str | None = None,
    ) -> dict[str, Any]:
        """Start task ``name`` (``owner``'s, with ``tags``): see ``submit``."""
        return await submit(
            self.base_url,
            name,
            params or {},
            api_key=self.api_key,
            owner=owner,
            tags=tags,
            token=token,
        )

    async def submit_group(
        self,
        name: str,
        *,
        count: int | None = None,
        params: dict[str, Any] | None = None,
        tasks: list[dict[str, Any]] | None = None,
        owner: str | None = None,
        tags: Sequence[str] = (),
        token: str | None = None,
    ) -> dict[str, Any]:
        """Start a group of task ``name``: see ``submit_group``."""
        return await submit_group(
            self.base_url,
            name,
            count=count,
            params=params,
            tasks=tasks,
            api_key=self.api_key,
            owner=owner,
            tags=tags,
            token=token,
        )

    async def get_history(
        self,
        owner: str,
        *,
        state: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """A page of ``owner``'s tasks, newest first: see ``get_history``."""
        return await get_history(
            self.base_url,
            owner,
            state=state,
            name=name,
            tag=tag,
            since=since,
            limit=limit,
            cursor=cursor,
            token=token,
            api_key=self.api_key,
        )

    def watch_feed(
        self, owner: str, *, token: str | None = None, give_up_after: float = 30.0
    ) -> AsyncIterator[dict[str, Any]]:
        """Every status of every task of ``owner``, live: see ``watch_feed``."""
        return watch_feed(
            self.base_url, owner, token=token, api_key=self.api_key, give_up_after=give_up_after
        )

    async def get_status(self, task_id: str, *, token: str | None = None) -> dict[str, Any]:
        """A task's status object: see ``get_status``."""
        return await get_status(self.base_url, task_id, token=token, api_key=self.api_key)

    async def get_group(self, group_id: str, *, token: str | None = None) -> dict[str, Any]:
        """A group's status object: see ``get_group``."""
        return await get_group(self.base_url, group_id, token=token, api_key=self.api_key)

    def watch(
        self, task_id: str, *, token: str | None = None, give_up_after: float = 30.0
    ) -> AsyncIterator[dict[str, Any]]:
        """A task's statuses until its final one: see ``watch``."""
        return watch(
            self.base_url, task_id, token=token, api_key=self.api_key, give_up_after=give_up_after
        )

    def watch_group(
        self, group_id: str, *, token: str | None = None, give_up_after: float = 30.0
    ) -> AsyncIterator[dict[str, Any]]:
        """A group's statuses until its final one: see ``watch_group``."""
        return watch_group(
            self.base_url, group_id, token=token, api_key=self.api_key, give_up_after=give_up_after
        )

    async def cancel(self, task_id: str, *, token: str | None = None) -> dict[str, Any]:
        """Cancel a task: see ``cancel``."""
        return await cancel(self.base_url, task_id, token=token, api_key=self.api_key)

    async def cancel_group(self, group_id: str, *, token: str | None = None) -> dict[str, Any]:
        """Cancel a group's unfinished members: see ``cancel_group``."""
        return await cancel_group(self.base_url, group_id, token=token, api_key=self.api_key)
