"""A webhook receiver for tests: real HTTPS on 127.0.0.1, recording every request.

Its certificate comes from the session's test CA (``tests.mailtrap_server.CA``), which
workers trust through ``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``, so a worker delivers to
it as to any receiver, TLS and all. ``Listener`` is a bare TCP port that counts the
connections it is offered, for targets that must never be connected to.
"""

from __future__ import annotations

import collections
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.mailtrap_server import CA

# A status, and the headers to answer with.
Answer = tuple[int, dict[str, str]]


@dataclass(frozen=True)
class Received:
    """One request the receiver got, and what it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float


class WebhookReceiver:
    """Records every POST and answers each with the next answer scripted for its path
    (``answer``), else ``200``.

    It binds ``port`` (0: a free one) when made, and serves once started: a receiver
    that is down is one not made yet, its port refusing connections.
    """

    def __init__(self, port: int = 0) -> None:
        self._answers: dict[str, collections.deque[Answer]] = collections.defaultdict(
            collections.deque
        )
        self._lock = threading.Lock()
        self.received: list[Received] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        CA.issue_cert("127.0.0.1").configure_cert(context)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` with these, in order."""
        with self._lock:
            self._answers[path].extend(answers)

    def requests(self, webhook_id: str) -> list[Received]:
        """Every request that carried ``webhook_id``, in the order they came."""
        with self._lock:
            return [r for r in self.received if r.headers.get("webhook-id") == webhook_id]

    def _respond(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        with self._lock:
            queued = self._answers[path]
            status, extra = queued.popleft() if queued else (200, {})
            self.received.append(Received(path, headers, body, status, time.time()))
            return status, extra

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, extra = receiver._respond(self.path, headers, body)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class Listener:
    """A TCP port on 127.0.0.1 that accepts and counts every connection (and closes it)."""

    def __init__(self, port: int = 0) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._socket.bind(("127.0.0.1", port))
            self._socket.listen(16)
        except OSError:
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        # shutdown wakes the accept() that waits in the thread; close alone does not.
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._socket.close()
        self._thread.join(5)
