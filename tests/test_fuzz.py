"""Random and malformed input (hypothesis) against a real uvicorn: no 5xx, no crash, and
every error names the problem; and one bad client never hurts another.

Hypothesis drives synchronous functions only, and this suite's servers run in the
session's event loop, which turns only while an async test awaits. So each test here is
async and awaits ``asyncio.to_thread`` of a hypothesis run; each example (a batch of
inputs drawn in that thread) is sent and checked by a coroutine handed back to the
session loop (``on_loop``), where the server runs too. Runs are derandomized and
bounded: the same inputs every time.

The server under fuzz sends what it dispatches to a queue of its own that no worker
consumes (a valid body does queue a task, which may sleep an hour): the test counts
that queue's messages against the requests that were accepted, and empties it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import httpx
import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, CheckFunction, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from taskcast.api.tutorial import SleepQuery
from taskcast.app import create_app
from taskcast.settings import Settings
from tests import env
from tests.support import (
    assert_progress_in_order,
    demo_app,
    final,
    read_until_closed,
    running_server,
    settings_with,
    submit,
    wait_for_state,
    ws_connect,
)

T = TypeVar("T")
LIMIT = Settings().ws_max_message_bytes
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# What the fuzz itself may take (generation included); the suite's usual 60 s is for
# tests that wait on a task.
pytestmark = pytest.mark.timeout(120)


def on_loop(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on ``loop`` (the session's, next to the servers) from a hypothesis
    thread, and wait for it. Only the drawing of examples happens in the thread: clients
    and servers share one thread, and never wait on each other for the GIL."""
    return asyncio.run_coroutine_threadsafe(work, loop).result()


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        # No shrinking: each replay costs real round trips, and a failure's message
        # carries the transcript that led to it (what a shrunk example would show).
        phases=[Phase.explicit, Phase.generate],
    )


@dataclasses.dataclass(frozen=True)
class FuzzServer:
    url: str
    queue_key: str


@pytest.fixture(scope="module")
async def fuzz_server(redis_client: redis.Redis) -> AsyncIterator[FuzzServer]:
    """The service, served with its production WebSocket options, dispatching to a
    queue nobody consumes."""
    queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    service_settings = settings_with(
        # No subscribe rate limit (tests/test_limits.py covers it): every frame here is
        # answered for what it says, not for how fast it came.
        subscribe_rate=0,
        # Small groups: every accepted one queues its members, one publish each.
        max_group_size=20,
    )
    app = create_app(settings=service_settings, celery_app=demo_app(queue=queue))
    try:
        async with running_server(app, **service_settings.uvicorn_options()) as url:
            yield FuzzServer(url, f"{env.KEY_PREFIX}{queue}")
    finally:
        redis_client.delete(f"{env.KEY_PREFIX}{queue}")


# -- WebSocket frames --------------------------------------------------------------

OPS = ("subscribe", "unsubscribe", "ping")
# The error codes of docs/protocol.md.
DOCUMENTED_CODES = {
    "invalid_message",
    "unknown_op",
    "invalid_task_id",
    "unknown_task",
    "too_many_subscriptions",
    "rate_limited",
    "too_many_connections",
    "unauthorized",
}


class Frame:
    """One client frame: text (``str``), binary (``bytes``), or with ``raw_text`` a text
    frame whose payload is given as bytes, possibly not UTF-8, as any client may send.

    Not a dataclass: hypothesis prints those field by field, 4 KiB payloads in full.
    """

    def __init__(self, payload: str | bytes, raw_text: bool = False) -> None:
        self.payload = payload
        self.raw_text = raw_text

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 80 else self.payload[:60]
        more = "" if shown is self.payload else f"... ({size_of(self)} bytes)"
        return f"Frame({shown!r}{more}{', raw_text=True' if self.raw_text else ''})"


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, drawn in proportion to its weight."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy
    )


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, one level of nesting at most: a ten times cheaper draw than
    ``st.recursive`` (deep nesting has a strategy of its own). Infinities are in: JSON
    has none, so ``json.dumps`` writes a token a JSON parser must refuse."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=20)
    )
    containers = st.lists(scalars, max_size=4) | st.dictionaries(
        st.text(max_size=8), scalars, max_size=4
    )
    return scalars | containers


def emails() -> st.SearchStrategy[str]:
    """Addresses, good and bad (``st.emails()`` takes a millisecond a draw)."""
    local = st.text(st.sampled_from('ab.+-_é"@ '), min_size=0, max_size=6)
    domain = st.sampled_from(["example.com", "b.co", "localhost", "a..b", "", "ex ample.com"])
    return st.builds("{}@{}".format, local, domain) | st.sampled_from(
        ["user@example.com", "a@b", "@example.com", "a@@example.com", "user@example.com\n"]
    )


def padded(size: int, char: str) -> str:
    """A ping frame with an extra field, ``size`` bytes long in UTF-8 (or one more)."""
    head, tail = '{"op": "ping", "pad": "', '"}'
    room = size - len(head) - len(tail)
    fill = char * (room // len(char.encode()))
    fill += "a" * (room - len(fill.encode()))
    return head + fill + tail


def frames(task_ids: st.SearchStrategy[str]) -> st.SearchStrategy[Frame]:
    ops = st.sampled_from(OPS) | st.text(max_size=12) | json_values()
    near_valid = st.fixed_dictionaries(
        {},
        optional={
            "op": ops,
            "task_id": task_ids
            | task_ids.map(lambda t: t[:-1])
            | task_ids.map(lambda t: t + "\n")
            | json_values(),
            "token": st.text(max_size=20) | json_values(),
            "extra": json_values(),
        },
    ).map(json.dumps)
    valid = st.builds(
        lambda op, task_id: json.dumps({"op": op, "task_id": task_id}),
        st.sampled_from(["subscribe", "unsubscribe"]),
        task_ids,
    ) | st.just('{"op": "ping"}')
    # Just under, at and over the size limit, in characters of 1 to 4 bytes.
    near_limit = st.builds(padded, st.integers(LIMIT - 8, LIMIT + 8), st.sampled_from("aé€😀"))
    return weighted(
        (20, valid.map(Frame)),
        (20, near_valid.map(Frame)),
        (10, json_values().map(json.dumps).map(Frame)),
        (10, st.text(max_size=200).map(Frame)),
        # Deeply nested JSON, within the size limit.
        (3, st.integers(1, LIMIT // 2).map(lambda depth: Frame("[" * depth + "]" * depth))),
        (3, st.binary(max_size=64).map(Frame)),
        # Over the size limit closes with 1009: fewer of these, each costs a new connection.
        (3, near_limit.map(Frame)),
        (1, st.integers(LIMIT - 2, LIMIT + 2).map(lambda size: Frame(b"\x00" * size))),
        # Not UTF-8 in a text frame: the WebSocket protocol's own close, 1007.
        (1, st.binary(min_size=1, max_size=16).map(lambda junk: Frame(b"\xff" + junk, True))),
    )


def size_of(frame: Frame) -> int:
    payload = frame.payload
    return len(payload if isinstance(payload, bytes) else payload.encode())


@dataclasses.dataclass(frozen=True)
class Expected:
    """The replies the protocol allows for one frame; ``task_id`` when the frame is a
    well-formed subscribe or unsubscribe of that (lower-cased) task."""

    kinds: frozenset[str]
    task_id: str | None = None
    # An unsubscribe's: the number of the subscribe of that task still unanswered when
    # it was sent, whose answer it may cancel.
    cancels: int | None = None


def expected_reply(frame: Frame, known_task: str) -> Expected:
    """What docs/protocol.md answers a frame that fits the size limit."""

    def any_of(*kinds: str) -> Expected:
        return Expected(frozenset(kinds))

    if isinstance(frame.payload, bytes):
        return any_of("invalid_message")
    try:
        message = json.loads(frame.payload)
    except (ValueError, RecursionError):
        return any_of("invalid_message")
    if not isinstance(message, dict) or "op" not in message:
        return any_of("invalid_message")
    op = message["op"]
    if not isinstance(op, str):
        return any_of("unknown_op", "invalid_message")
    if op not in OPS:
        return any_of("unknown_op")
    if op == "ping":
        return any_of("pong") if message.keys() == {"op"} else any_of("invalid_message")
    task_id = message.get("task_id")
    # A subscribe may carry a watch token (a string; the service checks none here).
    fields = {"op", "task_id", "token"} if op == "subscribe" else {"op", "task_id"}
    token = message.get("token")
    if not ({"op", "task_id"} <= message.keys() <= fields) or not (
        isinstance(task_id, str) and UUID.fullmatch(task_id)
    ):
        return any_of("invalid_message", "invalid_task_id")
    if not (token is None or isinstance(token, str)):
        return any_of("invalid_message")
    if op == "unsubscribe":
        return Expected(frozenset({"unsubscribed"}), task_id.lower())
    kind = "status" if task_id.lower() == known_task else "unknown_task"
    return Expected(frozenset({kind}), task_id.lower())


class FrameFuzzer:
    """One client on ``/ws`` that sends frames and checks every reply against the oracle.

    Replies that need no Redis read come in the order of the frames. The answer to a
    subscribe comes after the hub's read, so it is matched by task id, and a frame
    naming a task with an answer outstanding first waits for that answer, except an
    unsubscribe: then the answer may come before the ``unsubscribed`` or not at all,
    never after it.
    """

    def __init__(self, base_url: str, known_task: str) -> None:
        self.base_url = base_url
        self.known_task = known_task
        self.ws: ClientConnection | None = None
        self.in_order: collections.deque[Expected] = collections.deque()
        # Task id -> the answer its subscribe awaits, and that subscribe's number.
        self.by_task: dict[str, tuple[str, int]] = {}
        # False while a batch is under way: one that failed left its replies unread, so
        # the next (hypothesis replaying or shrinking it) starts on a new connection.
        self.clean = True
        self.sent = 0
        # This connection's frames (">") and replies ("<"), for failure messages.
        self.transcript: list[str] = []
        self.replies: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[int] = collections.Counter()

    async def connect(self) -> ClientConnection:
        if self.ws is not None:
            await self.ws.close()
        self.ws = await ws_connect(self.base_url, "/ws", max_size=None)
        self.transcript.clear()
        self.in_order.clear()
        self.by_task.clear()
        return self.ws

    async def batch(self, frames: list[Frame]) -> None:
        ws = self.ws if self.clean and self.ws is not None else await self.connect()
        self.clean = False
        for frame in frames:
            ws = await self.send(ws, frame)
        await self.settle_all(ws)
        self.clean = True

    async def send(self, ws: ClientConnection, frame: Frame) -> ClientConnection:
        """Send a frame, and return the connection to go on with."""
        self.sent += 1
        self.transcript.append(f"> {frame!r}")
        if size_of(frame) > LIMIT:
            return await self.expect_close(ws, frame, 1009)
        if frame.raw_text:
            return await self.expect_close(ws, frame, 1007)
        expected = expected_reply(frame, self.known_task)
        task_id = expected.task_id
        if task_id is None:
            self.in_order.append(expected)
        elif "unsubscribed" in expected.kinds:
            outstanding = self.by_task.get(task_id)
            cancels = outstanding[1] if outstanding else None
            self.in_order.append(dataclasses.replace(expected, cancels=cancels))
        else:
            while task_id in self.by_task:
                await self.receive(ws)
            (kind,) = expected.kinds
            self.by_task[task_id] = (kind, self.sent)
        await ws.send(frame.payload)
        return ws

    async def expect_close(self, ws: ClientConnection, frame: Frame, code: int) -> ClientConnection:
        await self.settle_all(ws)
        await ws.send(frame.payload, text=frame.raw_text or None)
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code, closed.value
        self.closes[code] += 1
        return await self.connect()

    async def settle_all(self, ws: ClientConnection) -> None:
        while self.in_order or self.by_task:
            await self.receive(ws)

    def story(self, task_id: str | None = None) -> str:
        """The transcript's lines about ``task_id`` (lower or upper case), or its end."""
        if task_id is None:
            return "\n".join(self.transcript[-12:])
        return "\n".join(
            line for line in self.transcript if task_id in line or task_id.upper() in line
        )

    async def receive(self, ws: ClientConnection) -> None:
        try:
            async with asyncio.timeout(5):
                message = json.loads(await ws.recv())
        except TimeoutError:
            raise AssertionError(
                f"no reply within 5 s; awaited: {self.by_task} and {list(self.in_order)}\n"
                + self.story()
            ) from None
        self.transcript.append(f"< {message}")
        kind = message["type"]
        if kind == "error":
            assert message["code"] in DOCUMENTED_CODES, message
            assert isinstance(message["detail"], str) and message["detail"].strip(), message
            kind = message["code"]
        else:
            assert kind in {"status", "pong", "unsubscribed"}, message
        self.replies[kind] += 1
        if kind in {"status", "unknown_task"}:
            awaited = self.by_task.pop(message["task_id"], None)
            assert awaited is not None and awaited[0] == kind, self.story(message["task_id"])
            if kind == "status":
                assert message["final"] and message["state"] == "SUCCESS", message
            return
        assert self.in_order, f"an answer to no frame: {message}"
        expected = self.in_order.popleft()
        assert kind in expected.kinds, (message, expected)
        if kind == "unsubscribed":
            assert message["task_id"] == expected.task_id, (message, expected)
            # The answer of the subscribe it cancelled, unless it came first, never will.
            outstanding = self.by_task.get(expected.task_id)
            if outstanding is not None and outstanding[1] == expected.cancels:
                del self.by_task[expected.task_id]


async def test_random_and_malformed_frames_never_hurt_anyone(
    fuzz_server: FuzzServer, client: httpx.AsyncClient, server_errors: list[logging.LogRecord]
) -> None:
    known = await submit(client, "sleep", seconds=0)
    await wait_for_state(client, known, final)
    # A well-behaved client of the same server, following a task through the fuzz.
    watched = await submit(client, "progress", total=30, step_seconds=0.1)
    async with ws_connect(fuzz_server.url, f"/ws/tasks/{watched}") as bystander:
        watching = asyncio.create_task(read_until_closed(bystander, within=100))
        fuzzer = FrameFuzzer(fuzz_server.url, known)
        task_ids = st.sampled_from([known, known.upper()]) | st.uuids().map(str)

        @fuzz_settings(max_examples=200)
        @given(st.lists(frames(task_ids), min_size=50, max_size=50))
        def fuzz(batch: list[Frame]) -> None:
            on_loop(loop, fuzzer.batch(batch))

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(fuzz)
        statuses, code = await watching
    # The fuzzing socket itself still serves a plain subscribe.
    fuzzer.known_task = watched
    await fuzzer.batch([Frame(json.dumps({"op": "subscribe", "task_id": watched}))])
    assert fuzzer.ws is not None
    await fuzzer.ws.close()
    print(f"frames sent: {fuzzer.sent}; replies: {dict(fuzzer.replies)}; closes: {fuzzer.closes}")
    # Text frames that are not UTF-8 were sent (closed 1007), and none of them was logged
    # as the server's error (server_errors: nothing at all).
    assert fuzzer.closes[1007] > 0
    assert fuzzer.sent >= 10_000
    assert code == 1000
    assert_progress_in_order(statuses)
    assert statuses[-1]["state"] == "SUCCESS"


# -- HTTP bodies and query strings ----------------------------------------------------

BODY_LIMIT = Settings().max_body_bytes
# What each route may answer: its success and the errors it documents (no 5xx at all).
QUERY_ROUTES = [
    ("GET", "/async-process/"),
    ("GET", "/sync-process/"),
    ("POST", "/process-data-with-status/"),
    ("POST", "/process-and-email/"),
]
ERROR_CODES = {
    400: {"invalid_json"},
    404: {"unknown_task_name", "unknown_task", "not_found"},
    405: {"method_not_allowed"},
    413: {"payload_too_large"},
    422: {"invalid_params", "invalid_query", "invalid_task_id"},
}


class Call:
    """One HTTP request; ``path`` is already quoted, ``query`` is sent as it is."""

    def __init__(self, method: str, path: str, query: str = "", body: bytes = b"") -> None:
        self.method, self.path, self.query, self.body = method, path, query, body

    @property
    def url(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 80 else self.body[:60] + b"..."
        return f"Call({self.method} {self.url!r} {body!r} ({len(self.body)} bytes))"


def numbers() -> st.SearchStrategy[Any]:
    """Parameter values: in, at and just over the bounds, of the wrong type, not finite."""
    edges = st.sampled_from([0, 1, 60, 60.5, 3600, 3600.01, 100_000, 100_001, -1, 1e400])
    return edges | st.integers(-10, 200_000) | st.floats() | st.booleans() | json_values()


def bodies() -> st.SearchStrategy[bytes]:
    params = st.fixed_dictionaries(
        {},
        optional={
            "seconds": numbers(),
            "total": numbers(),
            "step_seconds": numbers(),
            "to": emails() | st.text(max_size=20),
            "data": json_values(),
            "extra": json_values(),
        },
    )
    return weighted(
        # json.dumps writes NaN and Infinity for those floats, which is not JSON.
        (10, params.map(lambda value: json.dumps(value).encode())),
        (3, json_values().map(lambda value: json.dumps(value).encode())),
        (3, st.binary(max_size=64)),
        (3, st.text(max_size=64).map(str.encode)),
        (1, st.sampled_from([b"", b" ", b"\r\n\t", b"\x0b", b"null", b"[]", b"\xef\xbb\xbf{}"])),
        # Just under, at and over the body limit (a JSON object with a long string).
        (1, st.integers(BODY_LIMIT - 2, BODY_LIMIT + 2).map(
            lambda size: b'{"data": "' + b"a" * (size - 12) + b'"}'
        )),
    )  # fmt: skip


def queries() -> st.SearchStrategy[str]:
    values = (
        st.integers(-5, 200_000).map(str)
        | st.floats().map(str)
        | st.sampled_from(["", "0", "0.01", "nan", "inf", "1e3", "5_0", " 1", "0x10", "3601"])
        | emails()
        | st.text(max_size=12)
    )
    names = st.sampled_from(["seconds", "time", "email", "token"]) | st.text(max_size=6)
    encoded = st.lists(st.tuples(names, values), max_size=3).map(urllib.parse.urlencode)
    # Raw, possibly malformed: bad escapes (%zz, %ff), stray & and =.
    raw = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
    return encoded | raw.map(lambda query: query.replace("#", "%23"))


def calls() -> st.SearchStrategy[Call]:
    names = st.sampled_from(sorted(TASKS)) | st.text(max_size=12)
    ids = st.uuids().map(str) | st.text(max_size=40)
    methods = st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
    return weighted(
        (12, st.builds(lambda name, body: Call("POST", f"/tasks/{quote(name)}", body=body),
                       names, bodies())),
        (6, st.builds(lambda route, query, body: Call(*route, query=query, body=body),
                      st.sampled_from(QUERY_ROUTES), queries(), bodies())),
        (1, st.builds(lambda method, task_id, query: Call(method, f"/tasks/{task_id}", query),
                      st.sampled_from(["GET", "DELETE"]), ids.map(quote), queries())),
        (1, st.builds(lambda task_id: Call("GET", f"/task-status/{quote(task_id)}"), ids)),
        (1, st.builds(lambda method, name: Call(method, f"/tasks/{quote(name)}"), methods, names)),
    )  # fmt: skip


def quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


# The demo app's tasks, which the fuzzed service exposes.
TASKS = ("email", "progress", "sleep")


def accepts(name: str, body: bytes) -> bool | None:
    """Whether docs and README say ``POST /tasks/{name}`` queues ``body``; None: not judged
    here (an e-mail address is a matter for a real validator)."""
    if len(body) > BODY_LIMIT:
        return False
    try:
        params = json.loads(body.decode()) if body.strip() else {}
    except (ValueError, RecursionError):
        return False
    if name == "email":
        return None if isinstance(params, dict) and params.keys() == {"to", "data"} else False
    if not isinstance(params, dict):
        return False

    def number(key: str, low: float, high: float, default: float, integer: bool = False) -> float:
        value = params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(key)
        # JSON Schema's integer: no fractional part (441.0 is one).
        if not low <= value <= high or (integer and value != int(value)):
            raise ValueError(key)
        return float(value)

    try:
        if name == "sleep":
            return params.keys() <= {"seconds"} and number("seconds", 0, 3600, 10) >= 0
        total = number("total", 1, 100_000, 100, integer=True)
        step = number("step_seconds", 0, 60, 1)
        return params.keys() <= {"total", "step_seconds"} and total * step <= 3600
    except ValueError:
        return False


def quick_enough_query(query: dict[str, Any]) -> bool:
    """Whether ``GET /sync-process/`` answers this query at once: it runs its job inside
    the request, so a query it accepts must ask for no more than a moment's sleep."""
    try:
        return SleepQuery.model_validate(query).seconds <= 0.01
    except ValueError:
        return True


def as_received(query: dict[str, Any] | None) -> dict[str, Any]:
    """A query as ``requests`` sends it and Starlette reads it: a list is the key
    repeated and the last one counts; an empty list or None is no key at all."""
    received = {}
    for key, value in (query or {}).items():
        if isinstance(value, list):
            value = value[-1] if value else None
        if value is not None:
            received[key] = value
    return received


def quick_enough(call: Call) -> Call:
    """A call, with a ``/sync-process/`` query that would sleep sent to ``/async-process/``."""
    query = dict(urllib.parse.parse_qsl(call.query, keep_blank_values=True))
    if call.path != "/sync-process/" or quick_enough_query(query):
        return call
    return Call("GET", "/async-process/", call.query)


class HttpFuzzer:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.sent = 0
        self.accepted = 0
        self.statuses: collections.Counter[int] = collections.Counter()

    async def batch(self, batch: list[Call]) -> None:
        for call in map(quick_enough, batch):
            await self.send(call)

    async def send(self, call: Call) -> None:
        self.sent += 1
        response = await self.http.request(call.method, call.url, content=call.body)
        status = response.status_code
        self.statuses[status] += 1
        assert status < 500, (call, response.text)
        if status == 307:
            # Starlette's redirect of a path with a trailing slash (a quoted "/" ends the
            # name or id) to the one without: nothing was wrong, nothing was done.
            assert urllib.parse.unquote(call.path).endswith("/"), call
            assert "location" in response.headers, call
            return
        content_type = response.headers.get("content-type")
        assert content_type == "application/json", (call, status, response.headers, response.text)
        reply = response.json()
        if status >= 400:
            assert reply.keys() == {"error", "detail"}, (call, reply)
            assert reply["error"] in ERROR_CODES[status], (call, reply)
            assert isinstance(reply["detail"], str) and reply["detail"].strip(), (call, reply)
        else:
            assert status in (200, 202) and uuid.UUID(reply["task_id"]), (call, reply)
            self.accepted += 1
        if call.method == "POST" and call.path.startswith("/tasks/"):
            name = urllib.parse.unquote(call.path.removeprefix("/tasks/"))
            if name in ("", "."):
                # The URL's dot segment is resolved: this is POST /tasks, which only GETs.
                assert status in (307, 405), (call, reply)
            elif name not in TASKS:
                assert status == 404, (call, reply)
            elif (verdict := accepts(name, call.body)) is not None:
                assert (status == 202) == verdict, (call, reply)


async def test_random_and_malformed_requests_get_named_errors_and_queue_nothing(
    fuzz_server: FuzzServer, redis_client: redis.Redis, server_errors: list[logging.LogRecord]
) -> None:
    queued_before = redis_client.llen(fuzz_server.queue_key)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=fuzz_server.url, timeout=10) as http:
        fuzzer = HttpFuzzer(http)

        @fuzz_settings(max_examples=200)
        @given(st.lists(calls(), min_size=50, max_size=50))
        def fuzz(batch: list[Call]) -> None:
            on_loop(loop, fuzzer.batch(batch))

        await asyncio.to_thread(fuzz)
    print(f"requests sent: {fuzzer.sent}; answers: {sorted(fuzzer.statuses.items())}")
    assert fuzzer.sent >= 10_000
    # Exactly one message for every request that was answered with a task id.
    assert redis_client.llen(fuzz_server.queue_key) - queued_before == fuzzer.accepted


# -- schemathesis against /openapi.json -----------------------------------------------


def error_named(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> None:
    """Every 4xx is the JSON error object of the README, with a detail that says what."""
    if response.status_code < 400:
        return
    reply = response.json()
    assert reply.keys() == {"error", "detail"}, reply
    assert reply["error"] and isinstance(reply["error"], str), reply
    assert isinstance(reply["detail"], str) and reply["detail"].strip(), reply


# What refuses a request the schema allows, where JSON Schema cannot say it: the rule in
# words in the description, or a stricter reading of "format: email" (email-validator
# refuses reserved domains such as .test and some quoted local parts).
_PROGRESS_RULES = ("total * step_seconds must be at most 3600", "fail_at must be at most total")
_EMAIL_RULES = ("to: value is not a valid email address",)
UNSTATED_RULES = {
    "/tasks/progress": _PROGRESS_RULES,
    "/groups/progress": _PROGRESS_RULES,
    "/tasks/email": _EMAIL_RULES,
    "/groups/email": _EMAIL_RULES,
    "/process-and-email/": ("email: value is not a valid email address",),
    # A cursor is opaque: only one the service gave reads as one.
    "/feeds/{owner}/tasks": ("not a cursor this service gave",),
    # At least one id, each once, at most TASKCAST_MAX_SUBSCRIPTIONS over both lists.
    "/sse": (
        "name at least one ?task= or ?group= to follow",
        "each task and group may be named once",
        "a stream may follow at most",
    ),
}


# Every dispatch: tags name no owner of their own (?tag= needs ?owner=).
DISPATCH_RULES = ("tags go with an owner",)


def unstated_rules(method: str, path: str) -> tuple[str, ...]:
    """The rules in words that may refuse valid input to this operation."""
    dispatch = method.upper() == "POST" and path.startswith(("/tasks/", "/groups/"))
    return UNSTATED_RULES.get(path, ()) + (DISPATCH_RULES if dispatch else ())


def refused_only_by_unstated_rule(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> None:
    if response.status_code >= 400:
        detail = response.json()["detail"]
        rules = unstated_rules(case.method, case.path)
        assert any(rule in detail for rule in rules), response.text


# Streams that never end by themselves (an owner's feed): valid input would hold the
# call until its timeout, so only invalid input, refused before the stream, is sent here
# (tests/test_sse_feeds.py follows them).
ENDLESS = frozenset({"/sse/feeds/{owner}"})


def openapi_fuzz(base_url: str, examples: int) -> collections.Counter[str]:
    """Every operation of the service's own description, with valid and with invalid
    input: each answer checked by schemathesis' checks (no 5xx; status, content type and
    body as described; valid data accepted, invalid refused) and ``error_named``.
    Blocking (schemathesis calls with ``requests``): run it in a thread."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=10)
    calls: collections.Counter[str] = collections.Counter()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path not in ENDLESS:
                fuzz_operation(
                    operation, GenerationMode.POSITIVE, examples, session, base_url, calls
                )
            # Invalid input needs some input: /healthz and the like take none.
            if operation.body or any(operation.iter_parameters()):
                fuzz_operation(
                    operation, GenerationMode.NEGATIVE, examples, session, base_url, calls
                )
    return calls


def fuzz_operation(
    operation: APIOperation,
    mode: GenerationMode,
    examples: int,
    session: requests.Session,
    base_url: str,
    calls: collections.Counter[str],
) -> None:
    checks: dict[str, list[CheckFunction]] = {"additional_checks": [error_named]}
    if mode is GenerationMode.POSITIVE and unstated_rules(operation.method, operation.path):
        checks = {
            "excluded_checks": [positive_data_acceptance],
            "additional_checks": [error_named, refused_only_by_unstated_rule],
        }

    @fuzz_settings(max_examples=examples)
    @given(operation.as_strategy(generation_mode=mode))
    def check(case: Case) -> None:
        if case.path == "/sync-process/" and not quick_enough_query(as_received(case.query)):
            case.query = {"seconds": 0}
        response = case.call(base_url=base_url, session=session, timeout=10)
        calls[f"{case.method} {case.path}"] += 1
        case.validate_response(response, **checks)

    check()


async def test_schemathesis_finds_no_5xx_and_every_answer_as_described(
    fuzz_server: FuzzServer, server_errors: list[logging.LogRecord]
) -> None:
    calls = await asyncio.to_thread(openapi_fuzz, fuzz_server.url, 50)
    print(f"schemathesis calls: {sum(calls.values())}: {dict(calls)}")
    assert len(calls) >= 12
