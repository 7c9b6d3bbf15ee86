"""Redis Cluster as the ops plane sees it: every master's INFO, CONFIG GET maxmemory-policy and
CLUSTER INFO, and which master serves each topic's streams, folded into the one RedisStatus that
health judges (the node closest to its maxmemory stands for the memory figures; any master down
or any CLUSTER INFO not `ok` makes Redis down) with a NodeStatus per master beside it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from conveyor import wire
from conveyor.replies import text

log = logging.getLogger(__name__)

NODE_TIMEOUT = 2.0
"""Seconds one master may take to answer the status reads."""


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One master of the cluster, as the last status refresh read it."""

    address: str
    """host:port, as the cluster announces it."""
    up: bool = False
    cluster_state: str = ""
    """CLUSTER INFO's cluster_state as this node sees it: `ok`, or `fail` (slots uncovered)."""
    ping_latency: float = 0.0
    used_memory: int = 0
    maxmemory: int = 0
    maxmemory_policy: str = ""
    memory_not_counted: int = 0
    aof_enabled: bool = False
    aof_last_rewrite_status: str = ""
    run_id: str = ""
    connected_replicas: int = 0
    topics: tuple[str, ...] = ()
    """The topics (of registered groups) whose streams this master serves."""
    error: str = ""


def _fill(node: NodeStatus) -> float:
    """How close a node is to refusing writes: counted memory over maxmemory (0 without one)."""
    if not node.maxmemory:
        return 0.0
    return (node.used_memory - node.memory_not_counted) / node.maxmemory


async def _node(client: Any, node: Any) -> NodeStatus:
    try:
        async with asyncio.timeout(NODE_TIMEOUT):
            started = time.perf_counter()
            await client.ping(target_nodes=node)
            latency = time.perf_counter() - started
            info = await client.info(target_nodes=node)
            state = await client.cluster_info(target_nodes=node)
            policy = str(info.get("maxmemory_policy") or "")
            if not policy:
                try:
                    reply = await client.config_get("maxmemory-policy", target_nodes=node)
                    policy = text(reply.get("maxmemory-policy", b""))
                except ResponseError as exc:  # NOPERM, or CONFIG renamed away
                    log.debug("cannot read maxmemory-policy of %s: %r", node.name, exc)
    except (RedisError, OSError, TimeoutError) as exc:
        return NodeStatus(node.name, error=f"{type(exc).__name__}: {exc}")
    return NodeStatus(
        node.name,
        up=True,
        cluster_state=str(state.get("cluster_state", "")),
        ping_latency=latency,
        used_memory=int(info.get("used_memory", 0)),
        maxmemory=int(info.get("maxmemory", 0)),
        maxmemory_policy=policy,
        memory_not_counted=int(info.get("mem_not_counted_for_evict", 0)),
        aof_enabled=bool(int(info.get("aof_enabled", 0))),
        aof_last_rewrite_status=str(info.get("aof_last_bgrewrite_status", "")),
        run_id=str(info.get("run_id", "")),
        connected_replicas=int(info.get("connected_slaves", 0)),
    )


async def read_nodes(client: Any) -> tuple[NodeStatus, ...]:
    """A NodeStatus per master of the cluster client `client`."""
    try:
        async with asyncio.timeout(NODE_TIMEOUT):
            await client.initialize()
    except (RedisError, OSError, TimeoutError) as exc:
        return (NodeStatus("cluster", error=f"{type(exc).__name__}: {exc}"),)
    primaries = sorted(client.get_primaries(), key=lambda n: n.name)
    nodes = await asyncio.gather(*(_node(client, n) for n in primaries))
    if any(not n.up for n in nodes):
        try:  # a master died: learn the new slot map for the next refresh
            async with asyncio.timeout(NODE_TIMEOUT):
                await client.nodes_manager.initialize()
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("reloading the cluster slot map failed: %r", exc)
    return tuple(nodes)


def with_topics(redis: Any, client: Any, prefix: str, groups: Sequence[Any]) -> Any:
    """`redis` (a RedisStatus of a cluster) with each node's `topics`: those of `groups`
    (registered groups) whose streams its slots hold, by the client's slot map."""
    served: dict[str, list[str]] = {}
    for topic in sorted({g.topic for g in groups}):
        slot = key_slot(wire.Keys(topic, prefix).events.encode())
        try:
            served.setdefault(client.nodes_manager.get_node_from_slot(slot).name, []).append(topic)
        except (RedisError, KeyError):  # a slot no master serves right now
            continue
    nodes = tuple(replace(n, topics=tuple(served.get(n.address, ()))) for n in redis.nodes)
    return replace(redis, nodes=nodes)


def summary(nodes: Sequence[NodeStatus]) -> dict[str, Any]:
    """RedisStatus fields for the whole cluster: up when every master answers and says
    cluster_state ok; memory figures of the master closest to its maxmemory."""
    errors = [f"{n.address}: {n.error}" for n in nodes if n.error]
    errors += [
        f"{n.address}: cluster_state {n.cluster_state}"
        for n in nodes
        if n.up and n.cluster_state != "ok"
    ]
    up_nodes = [n for n in nodes if n.up]
    if not up_nodes:
        return {"up": False, "error": "; ".join(errors) or "no master answered"}
    tight = max(up_nodes, key=lambda n: (_fill(n), n.used_memory))
    rewrite = next(
        (n.aof_last_rewrite_status for n in up_nodes if n.aof_last_rewrite_status != "ok"), "ok"
    )
    return {
        "up": not errors,
        "ping_latency": max(n.ping_latency for n in up_nodes),
        "used_memory": tight.used_memory,
        "maxmemory": tight.maxmemory,
        "maxmemory_policy": tight.maxmemory_policy,
        "memory_not_counted": tight.memory_not_counted,
        "aof_enabled": all(n.aof_enabled for n in up_nodes),
        "aof_last_rewrite_status": rewrite,
        "run_id": ",".join(f"{n.address}={n.run_id}" for n in up_nodes),
        "error": "; ".join(errors),
    }
