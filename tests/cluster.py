"""A throwaway Redis Cluster: 3 masters and 3 replicas on loopback ports, each node in a temp dir.

    with RedisCluster() as cluster:          # started, slots covered, every replica in sync
        cluster.url                          # "redis://127.0.0.1:<port>/0": a node, auto-detected
        node = cluster.master_of("{t}:x")   # the node serving the key's slot
        cluster.kill(node)                   # SIGKILL
        cluster.wait_failover(slot, node)    # a replica promoted, CLUSTER INFO ok everywhere
        cluster.restart(node)                # back, as a replica of the new master

Nodes are tests/servers.py RedisServers (atexit closes them all, even when a test fails).
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import redis

from tests.servers import RedisServer, ServerError

NODE_TIMEOUT_MS = 1500
"""cluster-node-timeout: a killed master is failed over about two of these later."""


def binaries_missing() -> str | None:
    """Why no cluster can start here (redis-server or redis-cli not on PATH), else None."""
    for name in ("redis-server", "redis-cli"):
        if shutil.which(name) is None:
            return f"{name} not found on PATH: install it (apt-get install redis-server)"
    return None


def key_slot(key: str | bytes) -> int:
    """The cluster slot of `key` (CRC16 of its hash tag, as Redis computes it)."""
    from redis.crc import key_slot as slot  # noqa: PLC0415

    return int(slot(key.encode() if isinstance(key, str) else key))


def _bus_port() -> int:
    """A loopback port that is free, as is the cluster bus port 10000 above it (redis-server
    refuses ports over 55535 in cluster mode, which the kernel's ephemeral range reaches)."""
    for _ in range(200):
        port = random.randrange(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise ServerError("no free port pair for a cluster node")


def _wait(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError, ServerError):
            pass  # a node restarting, or no master for the slot yet
        if time.monotonic() > deadline:
            raise ServerError(f"redis cluster: {what} not within {timeout:.0f} s")
        time.sleep(0.1)


class RedisCluster:
    """3 masters + `replicas` replicas each, AOF on (appendfsync `fsync`), short node timeout."""

    def __init__(self, *, masters: int = 3, replicas: int = 1, fsync: str = "always") -> None:
        if why := binaries_missing():
            raise ServerError(why)
        config = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--appendfsync", fsync,
            # While one master is down, the slots of the others keep serving.
            "--cluster-require-full-coverage", "no",
        )  # fmt: skip
        self.masters, self.replicas = masters, replicas
        self.nodes = [
            RedisServer(appendonly=True, config=config) for _ in range(masters * (1 + replicas))
        ]
        for node in self.nodes:
            node.port = _bus_port()

    @property
    def url(self) -> str:
        """A URL of the first node that answers (clients discover the others)."""
        for node in self.nodes:
            if node.running:
                return node.url
        raise ServerError("redis cluster: no node running")

    @property
    def cluster_url(self) -> str:
        """The same node, in the URL form that forces cluster mode."""
        return self.url.replace("redis://", "redis+cluster://", 1)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        out = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=False, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if out.returncode != 0:
            raise ServerError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")
        _wait(self._healthy, "every slot covered and every replica in sync")

    def _client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)

    def _call(self, node: RedisServer, *args: str | int) -> object:
        with self._client(node) as client:
            return client.execute_command(*args)

    def _healthy(self) -> bool:
        for node in self.nodes:
            if not node.running:
                continue
            info = self._call(node, "CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
            if f"cluster_known_nodes:{len(self.nodes)}" not in text:
                return False
        for master in self.master_nodes():
            replication = self._client(master).info("replication")
            online = [
                v for k, v in replication.items() if k.startswith("slave") and isinstance(v, dict)
            ]
            if sum(1 for v in online if v.get("state") == "online") < self.replicas_of(master):
                return False
        return True

    def replicas_of(self, master: RedisServer) -> int:
        """Replicas expected in sync with `master` (running nodes that replicate it)."""
        node_id = self.node_id(master)
        return sum(
            1
            for node in self.nodes
            if node.running and node is not master and self._master_id(node) == node_id
        )

    def node_id(self, node: RedisServer) -> str:
        value = self._call(node, "CLUSTER", "MYID")
        return value.decode() if isinstance(value, bytes) else str(value)

    def _master_id(self, node: RedisServer) -> str | None:
        for line in self._nodes_lines(node):
            parts = line.split()
            if "myself" in parts[2]:
                return parts[3] if parts[3] != "-" else None
        return None

    def _nodes_lines(self, node: RedisServer) -> list[str]:
        value = self._call(node, "CLUSTER", "NODES")
        if isinstance(value, dict):  # redis-py parses the reply into a dict per address
            raise ServerError("unexpected parsed CLUSTER NODES")
        text = value.decode() if isinstance(value, bytes) else str(value)
        return [line for line in text.splitlines() if line.strip()]

    def master_nodes(self) -> list[RedisServer]:
        """The running nodes that serve slots now."""
        return [n for n in self.nodes if n.running and self._role(n) == "master"]

    def _role(self, node: RedisServer) -> str:
        return str(self._client(node).info("replication")["role"])

    def master_of(self, key: str) -> RedisServer:
        """The running node that serves `key`'s slot now."""
        return self.owner(key_slot(key))

    def owner(self, slot: int) -> RedisServer:
        """The running node that serves `slot` now, as a running node sees it."""
        by_port = {n.port: n for n in self.nodes}
        for asker in self.nodes:
            if not asker.running:
                continue
            for start, end, master, *_ in self._client(asker).execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    node = by_port.get(int(master[1]))
                    if node is not None and node.running and self._role(node) == "master":
                        return node
        raise ServerError(f"redis cluster: no running master serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A running node replicating `master`."""
        node_id = self.node_id(master)
        for node in self.nodes:
            if node.running and node is not master and self._master_id(node) == node_id:
                return node
        raise ServerError(f"redis cluster: no running replica of node {master.port}")

    def pause(self, node: RedisServer) -> None:
        """SIGSTOP a node: it neither answers nor replicates until `resume`."""
        node.signal(signal.SIGSTOP)

    def resume(self, node: RedisServer) -> None:
        node.signal(signal.SIGCONT)

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node."""
        node.kill()

    def wait_failover(self, slot: int, old: RedisServer, timeout: float = 60) -> RedisServer:
        """Wait until a node other than `old` serves `slot` and every running node reports
        cluster_state:ok; return the new master."""
        found: list[RedisServer] = []

        def promoted() -> bool:
            node = self.owner(slot)
            if node is old:
                return False
            for other in self.nodes:
                if other.running:
                    info = self._call(other, "CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" not in text:
                        return False
            found[:] = [node]
            return True

        _wait(promoted, f"a replica promoted for slot {slot}", timeout)
        return found[0]

    def restart(self, node: RedisServer) -> None:
        """Start a killed node again (it rejoins with its nodes.conf, as a replica once its
        old master was failed over) and wait until the cluster is healthy again."""
        node.start()
        _wait(self._healthy, f"node {node.port} rejoined")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

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


def migrate_slot(cluster: RedisCluster, slot: int, target: RedisServer) -> None:
    """Move `slot` with its keys to the master `target`, as `redis-cli --cluster reshard` does:
    IMPORTING/MIGRATING, MIGRATE of every key (clients meanwhile get ASK), then SETSLOT NODE on
    every master (clients then get MOVED)."""
    source = cluster.owner(slot)
    src_id, dst_id = cluster.node_id(source), cluster.node_id(target)
    cluster._call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    cluster._call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while keys := cluster._call(source, "CLUSTER", "GETKEYSINSLOT", slot, 100):
        assert isinstance(keys, list)
        cluster._call(source, "MIGRATE", "127.0.0.1", target.port, "", 0, 10_000, "KEYS", *keys)
    for node in cluster.master_nodes():
        cluster._call(node, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
