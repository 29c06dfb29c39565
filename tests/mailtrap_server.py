"""A stand-in for Mailtrap's sending API: real HTTPS on 127.0.0.1, answers from a script.

Its certificate comes from a test CA (``trustme``); workers trust that CA through
``REQUESTS_CA_BUNDLE``, so the real ``mailtrap`` client talks to it as it would to
Mailtrap, TLS and all.
"""

from __future__ import annotations

import collections
import itertools
import json
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

CA = trustme.CA()

Answer = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Received:
    """One request the server got."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeMailtrap:
    """Records every request and answers each with the next scripted answer.

    With no answer scripted it accepts the e-mail as Mailtrap does:
    ``200 {"success": true, "message_ids": ["msg-<n>"]}``. The port is bound (and
    listening) from construction on; requests are answered once ``start`` is called.
    """

    def __init__(self) -> None:
        self._answers: collections.deque[Answer] = collections.deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.received: list[Received] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        CA.issue_cert("127.0.0.1").configure_cert(context)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        """What the client takes as ``api_host``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order."""
        with self._lock:
            self._answers.extend(answers)

    def reset(self) -> None:
        with self._lock:
            self._answers.clear()
            self.received.clear()
            self._ids = itertools.count(1)

    def _respond(self, request: Received) -> Answer:
        with self._lock:
            self.received.append(request)
            if self._answers:
                return self._answers.popleft()
            return 200, {"success": True, "message_ids": [f"msg-{next(self._ids)}"]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                request = Received(
                    method="POST",
                    path=self.path,
                    headers={name.lower(): value for name, value in self.headers.items()},
                    body=json.loads(raw) if raw else None,
                )
                status, body = fake._respond(request)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                # Quiet: pytest shows what the assertions need.
                pass

        return Handler
