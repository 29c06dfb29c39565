"""nginx in front of taskcast's processes, as deploy/nginx/taskcast.conf ships it.

Debian's nginx (/usr/sbin/nginx) runs as the caller's child, in the foreground, with its
prefix, pid file, temporary files and logs in a directory of the caller's own, on a free
loopback port: never the system's service. tests/test_proxy.py and ``bench.soak --proxy``
both run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from bench.stack import ROOT

NGINX = "/usr/sbin/nginx"
SHIPPED = ROOT / "deploy" / "nginx" / "taskcast.conf"
# What each process behind nginx is told: the host name it answers to (the one the
# clients use, as nginx passes it on) and the proxy it believes X-Forwarded-* from
# (uvicorn's variable; 127.0.0.1 is also its default).
# Where the shipped access log goes, in the caller's directory (relative to nginx's prefix).
SHIPPED_LOG = "taskcast-access.log"
REPLICA_ENV = {"TASKCAST_ALLOWED_HOSTS": "127.0.0.1", "FORWARDED_ALLOW_IPS": "127.0.0.1"}

# nginx's own part of its configuration, around the shipped file: foreground, every path
# in the caller's directory, and an access log that says where each request went. Each
# proxied socket takes two of a worker's connections (the client's and the upstream's),
# and a file descriptor each.
MAIN_CONF = """daemon off;
{user}
worker_processes 2;
worker_rlimit_nofile {files};
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{
    worker_connections {connections};
}}
http {{
    log_format upstreams escape=json '{{"uri": "$request_uri", "status": "$status", '
        '"upstream": "$upstream_addr", "upstream_status": "$upstream_status"}}';
    access_log {dir}/access.log upstreams;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/taskcast.conf;
}}
"""


def render(listen: str, replicas: list[str], timeout: str | None = None) -> str:
    """The shipped configuration, listening on ``listen``, in front of ``replicas``
    (``host:port`` each, with the parameters of the shipped servers); ``timeout``
    replaces its read and send timeouts."""
    text = SHIPPED.read_text()
    servers = re.compile(r"^( *)server +(\S+:\d+)((?: +[^;]+)?);\n", re.MULTILINE)
    found = list(servers.finditer(text))
    assert len(found) >= 2, "the shipped upstream lists its replicas one per line"
    indent, parameters = found[0].group(1), found[0].group(3)
    lines = "".join(f"{indent}server {replica}{parameters};\n" for replica in replicas)
    text = text[: found[0].start()] + lines + servers.sub("", text[found[0].start() :])
    text, listens = re.subn(r"^( *)listen +80;$", rf"\1listen {listen};", text, flags=re.M)
    assert listens == 1
    # The shipped access log, in the caller's directory (relative to nginx's prefix); and,
    # since a server's own access_log replaces the http block's, MAIN_CONF's log again.
    text, logs = re.subn(
        r"^( *)access_log +\S+ +(\w+);$",
        rf"\1access_log {SHIPPED_LOG} \2;\n\1access_log access.log upstreams;",
        text,
        flags=re.M,
    )
    assert logs == 1
    if timeout is not None:
        text, timeouts = re.subn(
            r"^( *)(proxy_(?:read|send)_timeout) +\S+;$", rf"\1\2 {timeout};", text, flags=re.M
        )
        assert timeouts == 2
    return text


class Nginx:
    """One nginx in the foreground, with everything of its own in ``directory``;
    ``connections`` is each worker's worker_connections (at most the open files limit)."""

    def __init__(
        self, binary: str, directory: Path, site: str, port: int, connections: int = 512
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.url = f"http://127.0.0.1:{port}"
        # A master run by root runs its workers as nobody, who could not reach their
        # temporary files in the caller's private directory: root here, as the caller is.
        user = "user root;" if os.geteuid() == 0 else ""
        # A descriptor per connection, and a few for logs, listening and epoll; no more
        # than the hard limit nginx inherits (raising it takes CAP_SYS_RESOURCE, which a
        # container may lack: then nginx's setrlimit fails, with an alert in its log).
        files = connections + 64
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and files > hard:
            files, connections = hard, hard - 64
        (directory / "taskcast.conf").write_text(site)
        main = MAIN_CONF.format(user=user, dir=directory, connections=connections, files=files)
        (directory / "nginx.conf").write_text(main)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf, errors = self.directory / "nginx.conf", self.directory / "error.log"
        argv = [self.binary, "-p", f"{self.directory}/", "-c", str(conf), "-e", str(errors)]
        with open(self.directory / "output.log", "wb") as output:
            self.process = subprocess.Popen(
                argv, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, within: float = 20.0) -> None:
        """Until nginx answers /healthz with 200 (from a replica); blocking."""
        deadline = time.monotonic() + within
        last: int | str = "not asked"
        with httpx.Client(base_url=self.url, timeout=2) as http:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"nginx exited:\n{self.errors()}")
                try:
                    last = http.get("/healthz").status_code
                except httpx.HTTPError as exc:
                    last = repr(exc)
                if last == 200:
                    return
                time.sleep(0.02)
        raise AssertionError(f"nginx not ready within {within}s; last answer: {last!r}")

    def pids(self) -> list[int]:
        """The master's and its workers' process ids."""
        assert self.process is not None
        master = psutil.Process(self.process.pid)
        return [master.pid, *sorted(child.pid for child in master.children())]

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()  # nginx's fast shutdown: open sockets are not waited
        try:
            self.process.wait(10)
        finally:
            # Its workers, should the master have died before them.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def errors(self) -> str:
        logs = [self.directory / name for name in ("output.log", "error.log")]
        return "".join(path.read_text() for path in logs if path.exists())

    def access_log(self) -> list[dict[str, str]]:
        path = self.directory / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]
