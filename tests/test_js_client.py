"""taskcast.js, the service's JavaScript client, in a real Chromium against the real
service, worker and Redis; and, for what a real service cannot be made to do on cue (a
repeat, an error code, a silent socket), against a stand-in socket.

Each test drives the client from a page of the service's own origin, under the demo
page's Content-Security-Policy: ``/js-client/page.html``, served by the test
(Playwright's ``page.route``) with a module script that imports ``/static/taskcast.js``
as any app would, and records every callback in ``window.log`` (tests/browser.py's
``open_harness``, which tests/test_proxy.py drives through nginx too).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from subprocess import PIPE
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from taskcast.api.demo import STATIC_DIR
from taskcast.app import create_app
from taskcast.cli.devstack import free_port
from tests.browser import FOLLOW_SUBMITTED, Harness, check_followed, open_harness
from tests.support import WorkerProcess, eventually, running_server, settings_with

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context()
    yield context
    await context.close()


@pytest.fixture
async def harness(context: BrowserContext, base_url: str) -> AsyncIterator[Harness]:
    """The test page against the session's service; fails the test on a script error."""
    harness = await open_harness(context, base_url)
    yield harness
    assert not harness.errors, harness.errors


# -- one socket for many tasks -----------------------------------------------------------


async def test_follows_50_tasks_on_one_socket_to_their_finals(
    harness: Harness, worker: WorkerProcess
) -> None:
    spec = [("progress", {"total": 3, "step_seconds": 0.02}), ("sleep", {"seconds": 0})]
    ids: list[str] = await harness.run(FOLLOW_SUBMITTED, {"count": 50, "spec": spec})
    await harness.until("() => count('final') >= 50")
    log = await harness.log()
    for task_id in ids:
        check_followed(log, task_id, "SUCCESS")
    successes = [entry for entry in log if entry["name"] == "success"]
    assert sorted(entry["id"] for entry in successes) == sorted(ids)
    # One socket, each task subscribed on it once; the client is still live.
    assert len(harness.sockets) == 1, harness.sockets
    assert harness.sockets[0].endswith("/ws")
    subscribed = [frame["task_id"] for frame in harness.sent if frame["op"] == "subscribe"]
    assert sorted(subscribed) == sorted(ids)
    states = [entry["state"] for entry in await harness.run("window.connections")]
    assert states == ["connecting", "open"], states
    # The progress tasks' progress reached its own callback.
    assert await harness.run("count('progress')") >= 25


# -- a service restart -------------------------------------------------------------------


async def test_survives_the_service_restarting_mid_task(
    context: BrowserContext, worker: WorkerProcess
) -> None:
    port = free_port()
    async with running_server(create_app(), port=port) as url:
        harness = await open_harness(context, url)
        spec = [("progress", {"total": 40, "step_seconds": 0.1}), ("sleep", {"seconds": 4})]
        ids: list[str] = await harness.run(FOLLOW_SUBMITTED, {"count": 2, "spec": spec})
        # Both running (they hold the worker's two processes) when the service stops.
        await harness.until(
            """(ids) => ids.every((id) => log.some((e) => e.id === id && e.name === 'status'
                && ['STARTED', 'PROGRESS'].includes(e.value.state)))""",
            ids,
        )
    # Down until the client's next attempt has been refused too.
    await harness.until(
        """() => connections.filter((c) => c.state === 'reconnecting').length >= 2"""
    )
    assert await harness.run("count('final')") == 0  # every final comes after the restart
    async with running_server(create_app(), port=port):
        await harness.until("() => count('final') >= 2")
        connections: list[dict[str, Any]] = await harness.run("window.connections")
    log = await harness.log()
    check_followed(log, ids[0], "SUCCESS")
    check_followed(log, ids[1], "SUCCESS")
    assert not harness.errors, harness.errors
    # Dropped with the restart's 1012, refused while down, then live again on a new
    # socket, where both tasks were subscribed again.
    assert connections[:3] == [
        {"state": "connecting", "transport": "websocket", "attempt": 0},
        {"state": "open", "transport": "websocket", "attempt": 0},
        {
            "state": "reconnecting",
            "transport": "websocket",
            "attempt": 1,
            "code": 1012,
            "retryInMs": connections[2]["retryInMs"],
        },
    ], connections
    assert 250 <= connections[2]["retryInMs"] <= 500
    assert connections[-1]["state"] == "open", connections
    assert all(c["transport"] == "websocket" for c in connections)
    assert len(harness.sockets) >= 3
    resubscribed = [f["task_id"] for f in harness.sent if f["op"] == "subscribe"]
    assert sorted(resubscribed) == sorted(ids * 2), harness.sent


# -- Server-Sent Events where WebSockets are refused -------------------------------------


class RefuseWebSockets:
    """A proxy that passes plain HTTP on but answers every WebSocket upgrade 403."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            # Closed before being accepted: uvicorn answers the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


UNKNOWN = "00000000-0000-4000-8000-000000000000"

RECORD_EVENT_SOURCES = """() => {
    window.sources = [];
    window.RecordingEventSource = class extends EventSource {
        constructor(url) { super(url); window.sources.push(this); }
    };
}"""


async def test_falls_back_to_server_sent_events_when_websockets_are_refused(
    context: BrowserContext, worker: WorkerProcess
) -> None:
    async with running_server(RefuseWebSockets(create_app())) as url:
        harness = await open_harness(context, url)
        await harness.run(RECORD_EVENT_SOURCES)
        await harness.run("() => newClient({ EventSource: RecordingEventSource }).connect()")
        # Two refused handshakes while HTTP answers, then the event stream (nothing to
        # follow yet: open, with no stream).
        await harness.until("() => client.connection.state === 'open'")
        assert await harness.run("client.connection.transport") == "sse"
        first = [("progress", {"total": 8, "step_seconds": 0.1}), ("sleep", {"seconds": 0.3})]
        ids: list[str] = await harness.run(FOLLOW_SUBMITTED, {"count": 2, "spec": first})
        # A task that does not exist is over at once, told by an error event.
        await harness.run("(id) => follow('task', id, null)", UNKNOWN)
        await harness.until(
            "(id) => log.some((e) => e.id === id && e.value.state === 'PROGRESS')", ids[0]
        )
        # One more while the stream runs: the stream is opened again with all three.
        more: list[str] = await harness.run(
            """async () => {
                const reply = await client.submit("sleep", { seconds: 0 });
                follow("task", reply.task_id, reply.token);
                return [reply.task_id];
            }"""
        )
        await harness.until("() => count('final') >= 4")
        log = await harness.log()
        for task_id in ids + more:
            check_followed(log, task_id, "SUCCESS")
        assert [(e["name"], e["value"]["code"]) for e in log if e["id"] == UNKNOWN] == [
            ("error", "unknown_task"),
            ("final", "unknown_task"),
        ]
        # Every stream closed: the last by its `end` event (a browser would reconnect).
        await harness.until("() => sources.every((s) => s.readyState === EventSource.CLOSED)")
        assert not harness.errors, harness.errors
    assert len(harness.sockets) == 2  # refused twice, then never tried again
    streams = [u for u in harness.requests if re.search(r"/sse\?(task|group)=", u)]
    assert streams, harness.requests
    # Opened again for the third task, with every one not yet ended, and resuming from
    # the last event seen.
    named = httpx.URL(streams[-1]).params.get_list("task")
    assert more[0] in named and set(named) <= set(ids + more), streams
    assert "last_event_id=" in streams[-1], streams


async def test_a_stream_refused_for_one_token_ends_that_subscription_alone(
    context: BrowserContext, worker: WorkerProcess
) -> None:
    """An event stream with a bad token among its ids is refused whole (401, which an
    EventSource cannot read): the client asks why, ends the subscription whose token
    fails, and follows the rest on a new stream."""
    settings = settings_with(secret=secrets.token_urlsafe(48))
    async with running_server(RefuseWebSockets(create_app(settings=settings))) as url:
        harness = await open_harness(context, url)
        ids = await harness.run(
            """async () => {
                newClient({ transport: "sse" });
                const good = await client.submit("progress", { total: 3, step_seconds: 0.1 });
                const other = await client.submit("sleep", { seconds: 0 });
                follow("task", good.task_id, good.token);
                follow("task", other.task_id, good.token);  // not its token
                return [good.task_id, other.task_id];
            }"""
        )
        await harness.until("() => count('final') === 2")
        log = await harness.log()
        check_followed(log, ids[0], "SUCCESS")
        assert [(e["name"], e["value"]["code"]) for e in log if e["id"] == ids[1]] == [
            ("error", "unauthorized"),
            ("final", "unauthorized"),
        ]
        assert await harness.run("window.clientErrors") == []
        assert harness.sockets == []  # "sse" means no WebSocket at all
    assert not harness.errors, harness.errors


# -- auth on: an API key for REST, tokens for watching -----------------------------------


async def test_with_auth_on_submits_and_cancels_with_a_key_and_follows_with_tokens(
    context: BrowserContext, worker: WorkerProcess
) -> None:
    key = secrets.token_urlsafe(24)
    settings = settings_with(api_keys=(key,), secret=secrets.token_urlsafe(48))
    async with running_server(create_app(settings=settings)) as url:
        harness = await open_harness(context, url)
        # Without a key: refused, with the service's reasons on the error.
        refused = await harness.run(
            """async () => {
                newClient().connect();
                try { await client.submit("sleep", { seconds: 0 }); }
                catch (error) { return { ...error, name: error.name, message: error.message }; }
            }"""
        )
        assert refused["status"] == 401 and refused["code"] == "unauthorized", refused
        assert refused["body"]["error"] == "unauthorized"
        assert "API key" in refused["detail"] and refused["message"] == refused["detail"]
        assert refused["name"] == "TaskcastError"
        replies = await harness.run(
            """async (key) => {
                client.apiKey = key;
                const done = await client.submit("sleep", { seconds: 0 });
                const running = await client.submit("sleep", { seconds: 60 });
                const members = { count: 2, params: { seconds: 0 } };
                const group = await client.submitGroup("sleep", members);
                const stranger = await client.submit("sleep", { seconds: 0 });
                follow("task", done.task_id, done.token);
                follow("task", running.task_id, running.token);
                follow("group", group.group_id, group.token);
                // Another task's token: refused for that subscription alone.
                follow("task", stranger.task_id, done.token);
                return { done, running, group, stranger };
            }""",
            key,
        )
        done, running = replies["done"]["task_id"], replies["running"]["task_id"]
        group, stranger = replies["group"]["group_id"], replies["stranger"]["task_id"]
        assert all(reply["token"] for reply in replies.values())
        await harness.until("(id) => count('final', id) === 1", stranger)
        await harness.until(
            "(id) => log.some((e) => e.id === id && e.value.state === 'STARTED')", running
        )
        cancelled = await harness.run("(id) => client.cancel(id)", running)
        assert cancelled["task_id"] == running
        await harness.until("() => count('final') === 4")
        # Cancelling what has ended: refused with the service's 409.
        again = await harness.run(
            "(id) => client.cancel(id).catch((e) => ({ status: e.status, code: e.code }))", running
        )
        assert again == {"status": 409, "code": "already_final"}
        # A token alone reads its task over REST (as the Bearer credential).
        status = await harness.run(
            """([id, token]) => { client.apiKey = null; return client.status(id, { token }); }""",
            [done, replies["done"]["token"]],
        )
        assert status["state"] == "SUCCESS"
        log = await harness.log()
        check_followed(log, done, "SUCCESS")
        check_followed(log, running, "REVOKED")
        [failure] = [e["value"] for e in log if e["id"] == running and e["name"] == "failure"]
        assert failure["type"] == "TaskRevokedError"
        group_statuses = [e["value"] for e in log if e["id"] == group and e["name"] == "status"]
        assert group_statuses[-1]["state"] == "SUCCESS" and group_statuses[-1]["done"] == 2
        assert [e["name"] for e in log if e["id"] == stranger] == ["error", "final"]
        error = next(e["value"] for e in log if e["id"] == stranger)
        assert error["code"] == "unauthorized" and error["retrying"] is False
        assert error["taskId"] == stranger and error["isError"]
        # Only the stranger's subscribe failed: nothing else was refused on the socket.
        assert await harness.run("window.clientErrors") == []
        # Tokens travelled in the subscribe frames (the key never did).
        subscribes = [f for f in harness.sent if f["op"] == "subscribe"]
        assert len(subscribes) == 4 and all(f.get("token") for f in subscribes)
        assert key not in json.dumps(harness.sent)
    assert not harness.errors, harness.errors


# -- a script error ----------------------------------------------------------------------


async def test_a_callback_that_throws_is_the_page_s_error_and_the_rest_goes_on(
    context: BrowserContext, base_url: str, worker: WorkerProcess
) -> None:
    harness = await open_harness(context, base_url)
    await harness.run(
        """async () => {
            newClient();
            const reply = await client.submit("sleep", { seconds: 0 });
            follow("task", reply.task_id, null, {
                onStatus: () => { throw new Error("a bug in the page"); },
            });
            follow("task", reply.task_id, null);  // a second listener of the same task
        }"""
    )
    await harness.until("() => count('final') === 2")
    # Uncaught, as the page would see it (once for each status it was given); neither
    # listener missed its final.
    assert harness.errors
    assert {str(error) for error in harness.errors} == {"a bug in the page"}
    assert len(harness.sockets) == 1


# -- a stand-in socket: repeats, stale snapshots, error and close codes, keep-alive ------

T1 = "11111111-1111-4111-8111-111111111111"
T2 = "22222222-2222-4222-8222-222222222222"
T3 = "33333333-3333-4333-8333-333333333333"
T4 = "44444444-4444-4444-8444-444444444444"


def status(task_id: str, state: str, current: int | None = None, **more: Any) -> dict[str, Any]:
    """A status message as the service sends it."""
    progress = None
    if current is not None:
        progress = {
            "current": current,
            "total": 5,
            "percent": current * 20.0,
            "message": None,
            "rate": more.pop("rate", None),
            "eta_s": more.pop("eta_s", None),
        }
    final = state in ("SUCCESS", "FAILURE", "REVOKED")
    message = {
        "type": "status",
        "task_id": task_id,
        "state": state,
        "final": final,
        "stalled": False,
        "progress": progress,
        "result": "done" if state == "SUCCESS" else None,
        "error": None,
    }
    return {**message, **more}


def error(code: str, task_id: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "detail": f"{code} (stand-in)", "task_id": task_id}


class StandIn:
    """The page's /ws sockets, answered by the test: ``answer`` gives the messages that
    answer a client frame on the n-th socket."""

    def __init__(self, answer: Callable[[int, dict[str, Any]], list[dict[str, Any]]]) -> None:
        self.answer = answer
        self.sockets: list[WebSocketRoute] = []
        self.frames: list[tuple[int, dict[str, Any]]] = []

    def serve(self, socket: WebSocketRoute) -> None:
        number = len(self.sockets)
        self.sockets.append(socket)

        def on_frame(frame: str | bytes) -> None:
            command = json.loads(frame)
            self.frames.append((number, command))
            for message in self.answer(number, command):
                socket.send(json.dumps(message))

        socket.on_message(on_frame)

    def push(self, *messages: dict[str, Any]) -> None:
        for message in messages:
            self.sockets[-1].send(json.dumps(message))


async def stand_in_harness(context: BrowserContext, base_url: str, stand_in: StandIn) -> Harness:
    await context.route_web_socket(re.compile(r"/ws$"), stand_in.serve)
    return await open_harness(context, base_url)


async def test_repeats_stale_snapshots_and_errors_from_a_stand_in_socket(
    context: BrowserContext, base_url: str
) -> None:
    subscribes: dict[str, int] = {}

    def answer(socket: int, command: dict[str, Any]) -> list[dict[str, Any]]:
        task_id = command.get("task_id", "")
        if command["op"] != "subscribe":
            return []
        subscribes[task_id] = subscribes.get(task_id, 0) + 1
        if task_id == T1:
            return [status(T1, "SENT")]
        if task_id == T2:
            return [error("unauthorized", T2)]
        if task_id == T3 and subscribes[T3] == 1:
            return [error("rate_limited", T3)]
        if task_id == T3:
            # Sent again after the reconnect: an older snapshot than what was shown.
            return [status(T3, "PROGRESS", 1 if socket else 3)]
        if task_id == T4 and socket == 0 and subscribes[T4] == 1:
            return [error("too_many_subscriptions", T4)]
        return [status(task_id, "STARTED")]

    stand_in = StandIn(answer)
    harness = await stand_in_harness(context, base_url, stand_in)
    await harness.run(
        """(ids) => { newClient(); for (const id of ids) follow("task", id, null); }""",
        [T1, T2, T3, T4],
    )
    await harness.until("(id) => count('final', id) === 1", T2)  # unauthorized: over
    await harness.until("(id) => count('status', id) === 1", T3)  # rate_limited, then sent
    stand_in.push(
        status(T1, "STARTED"),
        status(T1, "STARTED"),  # a repeat
        status(T1, "PROGRESS", 2, rate=1.0, eta_s=3.0),
        status(T1, "PROGRESS", 2),  # the same but for the estimates
        status(T1, "PROGRESS", 3, rate=1.0, eta_s=2.0),
        status(T1, "SUCCESS", 5),
        status(T1, "PROGRESS", 4),  # after the final
        status(T1, "SUCCESS", 5),
    )
    # T1's final frees a slot: T4, refused for too many subscriptions, is sent again.
    await harness.until("(id) => count('final', id) === 1", T1)
    await harness.until("(id) => count('status', id) === 1", T4)
    # The server is busy: the client comes back, later than after other codes.
    await stand_in.sockets[0].close(code=1013, reason="try again later")
    await harness.until("() => connections.at(-1).state === 'open'")
    # Its subscribes on the new socket are answered: T3's snapshot (at 1) is behind what
    # was shown (3), so it is not shown; T4's is the same as before.
    await eventually(lambda: len([f for n, f in stand_in.frames if n == 1]) == 2, bool, within=10)
    stand_in.push(status(T3, "STARTED"), status(T3, "PROGRESS", 1), status(T3, "SUCCESS", 5))
    await harness.until("(id) => count('final', id) === 1", T3)

    log = await harness.log()
    t1 = [(e["value"]["state"], (e["value"]["progress"] or {}).get("current")) for e in log
          if e["id"] == T1 and e["name"] == "status"]  # fmt: skip
    assert t1 == [("SENT", None), ("STARTED", None), ("PROGRESS", 2), ("PROGRESS", 3),
                  ("SUCCESS", 5)]  # fmt: skip
    assert [e["value"] for e in log if e["id"] == T1 and e["name"] == "success"] == ["done"]
    # A task retried within one connection counts again from the start: shown as sent.
    t3 = [(e["value"]["state"], (e["value"]["progress"] or {}).get("current")) for e in log
          if e["id"] == T3 and e["name"] == "status"]  # fmt: skip
    assert t3 == [("PROGRESS", 3), ("STARTED", None), ("PROGRESS", 1), ("SUCCESS", 5)]
    assert [e["name"] for e in log if e["id"] == T2] == ["error", "final"]
    assert [e["value"]["code"] for e in log if e["id"] == T2 and e["name"] == "final"] == [
        "unauthorized"
    ]
    client_errors = await harness.run("window.clientErrors")
    assert [(e["code"], e["retrying"]) for e in client_errors] == [
        ("rate_limited", True),
        ("too_many_subscriptions", True),
    ]
    # After 1013 the wait starts at 2 to 4 s; after the reconnect only the open ones
    # (T3, T4) are subscribed again.
    [busy] = [c for c in await harness.run("window.connections") if c.get("code") == 1013]
    assert 2000 <= busy["retryInMs"] <= 4000
    assert sorted(c["task_id"] for n, c in stand_in.frames if n == 1) == [T3, T4]
    assert len(stand_in.sockets) == 2
    assert not harness.errors, harness.errors


async def test_a_silent_socket_is_pinged_then_abandoned(
    context: BrowserContext, base_url: str
) -> None:
    # The first socket never answers; the second answers every ping.
    def answer(socket: int, command: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "pong"}] if socket > 0 and command["op"] == "ping" else []

    def frames(socket: int) -> list[dict[str, Any]]:
        return [frame for n, frame in stand_in.frames if n == socket]

    stand_in = StandIn(answer)
    harness = await stand_in_harness(context, base_url, stand_in)
    # A ping after 0.6 s of silence; given up 0.3 s after it.
    await harness.run("() => newClient({ keepAliveMs: 600 }).connect()")
    await harness.until("() => connections.filter((c) => c.state === 'open').length === 2")
    # Kept while it answers: three pings, each answered, on the same socket.
    await eventually(lambda: len(frames(1)) >= 3, bool, within=10)
    assert frames(0) == [{"op": "ping"}]
    assert all(frame == {"op": "ping"} for frame in frames(1))
    states = [c["state"] for c in await harness.run("window.connections")]
    assert states == ["connecting", "open", "reconnecting", "connecting", "open"], states
    assert len(stand_in.sockets) == 2
    assert not harness.errors, harness.errors


NODE_SCRIPT = """
import { TaskcastClient } from "./taskcast.mjs";

const client = new TaskcastClient({ url: process.argv[2] });
const reply = await client.submit("progress", { total: 3, step_seconds: 0.05 });
const states = [];
const ending = await new Promise((resolve) => {
  client.subscribe(reply.task_id, { onStatus: (s) => states.push(s.state), onFinal: resolve });
});
client.close();
console.log(JSON.stringify({ states, final: ending.state }));
"""


async def node_with_websocket() -> list[str] | None:
    """The command that runs Node with a global WebSocket (Node 22; Node 20 behind a
    flag), or None."""
    node = shutil.which("node")
    if node is None:
        return None
    for argv in ([node], [node, "--experimental-websocket"]):
        probe = await asyncio.create_subprocess_exec(
            *argv, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
        )
        if await probe.wait() == 0:
            return argv
    return None


async def test_runs_under_node_where_websocket_and_fetch_exist(
    base_url: str, worker: WorkerProcess, tmp_path: Path
) -> None:
    argv = await node_with_websocket()
    if argv is None:
        pytest.skip("no Node with a global WebSocket here")
    # As a Node project would take it: the file, as an ES module.
    shutil.copy(STATIC_DIR / "taskcast.js", tmp_path / "taskcast.mjs")
    (tmp_path / "follow.mjs").write_text(NODE_SCRIPT)
    node = await asyncio.create_subprocess_exec(
        *argv, "follow.mjs", base_url, cwd=tmp_path, stdout=PIPE, stderr=PIPE
    )
    async with asyncio.timeout(20):
        out, err = await node.communicate()
    assert node.returncode == 0, err.decode()
    followed = json.loads(out)
    assert followed["final"] == "SUCCESS", followed
    assert followed["states"][-1] == "SUCCESS" and followed["states"].count("SUCCESS") == 1


async def test_the_types_file_is_served_as_typescript(client: httpx.AsyncClient) -> None:
    types = await client.get("/static/taskcast.d.ts")
    assert types.status_code == 200
    assert types.headers["content-type"] == "application/typescript; charset=utf-8"
    assert "export declare class TaskcastClient" in types.text
    module = await client.get("/static/taskcast.js")
    assert module.headers["content-type"].startswith("text/javascript")
    assert '/// <reference types="./taskcast.d.ts" />' in module.text
