"""A throwaway Redis Cluster of N masters and no replicas for benchmarks/scaling.py: loopback
ports, a temporary directory per node, AOF with appendfsync everysec, the 16,384 slots split
evenly. Built with CLUSTER ADDSLOTSRANGE and MEET rather than `redis-cli --cluster create`, which
refuses fewer than three masters."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

SLOTS = 16384


def _free_port() -> int:
    """A loopback port free together with its cluster bus port (10,000 above it)."""
    for _ in range(200):
        port = random.randrange(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """`masters` redis-server nodes forming one cluster; `url` names its first node (processes
    find it is a cluster node at start, and so does `conveyor.redis_client.detect`)."""

    def __init__(self, masters: int) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        self.masters = masters
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="conveyor-scaling-cluster-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 60.0) -> None:
        for i in range(self.masters):
            port = _free_port()
            work = self._dir / str(i)
            work.mkdir()
            self._procs.append(
                subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                     "--dir", str(work), "--cluster-enabled", "yes",
                     "--cluster-config-file", "nodes.conf", "--appendonly", "yes",
                     "--appendfsync", "everysec", "--save", ""],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            self.ports.append(port)
        clients = [redis.Redis(port=p, socket_timeout=5) for p in self.ports]
        try:
            self._until(lambda: all(c.ping() for c in clients), "every node answers", timeout)
            per = SLOTS // self.masters
            for i, c in enumerate(clients):
                last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
                if i:
                    c.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
            self._until(lambda: all(_ok(c, self.masters) for c in clients), "cluster ok", timeout)
        finally:
            for c in clients:
                c.close()

    @staticmethod
    def _until(check: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():  # type: ignore[operator]
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster: {what} not within {timeout:.0f} s")
            time.sleep(0.1)

    def close(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _ok(client: redis.Redis, masters: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and f"cluster_known_nodes:{masters}" in text
