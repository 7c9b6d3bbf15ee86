"""The status snapshot: components, Redis, outboxes and consumer groups, refreshed in the
background so health and status calls never do I/O."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import asyncpg
from redis.exceptions import RedisError, ResponseError

from admin.catalog import Catalog
from admin.catalog.layouts import named_keys
from admin.catalog.registry import RegisteredGroup
from admin.ops import cluster_status, members
from admin.ops.cluster_status import NodeStatus
from admin.ops.members import MemberStatus
from admin.ops.ordering_status import with_leases
from admin.ops.redis_memory import PolicyLog, out_of_memory
from conveyor import redis_client
from conveyor.entry_ids import EntryId
from conveyor.outages import unreachable
from conveyor.replies import text
from conveyor.retry import pause

log = logging.getLogger(__name__)

State = Literal["SERVING", "DEGRADED", "NOT_SERVING"]


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """One component's state, e.g. `conveyor.relay.identity`, with why it is not SERVING."""

    name: str
    state: State
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RedisStatus:
    up: bool = False
    ping_latency: float = 0.0
    used_memory: int = 0
    maxmemory: int = 0
    maxmemory_policy: str = ""
    """'' when Redis would say neither in INFO nor to CONFIG GET."""
    memory_not_counted: int = 0
    """Memory Redis does not count against maxmemory (replication and AOF buffers)."""
    aof_enabled: bool = False
    aof_last_rewrite_status: str = ""
    run_id: str = ""
    error: str = ""
    cluster: bool = False
    """A Redis Cluster: the figures above are the whole cluster's (admin.ops.cluster_status)."""
    nodes: tuple[NodeStatus, ...] = ()
    """Each master of a cluster; empty for one server."""

    @property
    def out_of_memory(self) -> bool:
        """Redis refuses commands that add data for want of memory (admin.ops.redis_memory)."""
        return self.up and out_of_memory(self.used_memory, self.memory_not_counted, self.maxmemory)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    schema: str
    backlog: int
    oldest_age: float


@dataclass(frozen=True, slots=True)
class GroupStatus:
    topic: str
    group: str
    lag_entries: int
    lag_seconds: float
    """Age of the oldest entry the group has not acknowledged (pending or undelivered)."""
    pending: int
    consumers: int
    mode: str
    members: tuple[MemberStatus, ...] = ()
    """Its members on the topic's stream (admin.ops.members)."""
    lease_owner: str = ""
    """Ordered partitions: the member holding the lease ('' when none does)."""
    lease_epoch: int = 0
    parked_aggregates: tuple[str, ...] = ()
    """Ordered partitions: aggregates held behind an open dead letter of the group (park)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    taken_at: float = field(default_factory=time.time)
    components: tuple[ComponentStatus, ...] = ()
    redis: RedisStatus = RedisStatus()
    outboxes: tuple[OutboxStatus, ...] = ()
    groups: tuple[GroupStatus, ...] = ()
    postgres_up: bool | None = None
    """The last read of the consumer registry answered; None before the first one."""

    @property
    def overall(self) -> State:
        states = {c.state for c in self.components}
        if "NOT_SERVING" in states:
            return "NOT_SERVING"
        return "DEGRADED" if "DEGRADED" in states else "SERVING"


class Probe(Protocol):
    """What a process tells about its own components (relay forwarders, consumer workers)."""

    def components(
        self, redis: RedisStatus, groups: Sequence[GroupStatus], now: float
    ) -> list[ComponentStatus]: ...

    def outboxes(self) -> list[OutboxStatus]: ...


class StatusChecker:
    """Refreshes the snapshot every `interval` seconds and tells `on_change` about it."""

    def __init__(
        self,
        *,
        redis: Any,
        catalog: Catalog,
        probe: Probe,
        on_change: Callable[[Snapshot], Awaitable[None]] | None = None,
        interval: float = 1.0,
    ) -> None:
        self._redis = redis
        self._catalog = catalog
        self._probe = probe
        self._prefix = catalog.key_prefix
        self._on_change = on_change
        self._interval = interval
        self._registry_failing = False
        """The last read of the consumer registry failed (a failure is logged once)."""
        self._registry_read: bool | None = None
        """The last read of the consumer registry answered; None before the first one."""
        self._registered: list[RegisteredGroup] = []
        """The groups of the last read of the registry that answered: while PostgreSQL is away
        they are still measured in Redis, so their lag stays served."""
        self._reading: asyncio.Future[list[RegisteredGroup]] | None = None
        """The registry read in progress: one that outlives a refresh's wait goes on (until the
        pool's statement timeout ends it) and is waited for again by the next refresh."""
        self._policy_log = PolicyLog(log)
        self._config_policy: str | None = None
        """maxmemory-policy as CONFIG GET said it, for a Redis whose INFO does not; '' when
        CONFIG GET is refused too (an ACL, a managed Redis): it is not asked again."""
        self.snapshot = Snapshot()

    async def run(self, stopping: asyncio.Event) -> None:
        """Refresh every interval until `stopping`, the first time after one interval (the
        plane awaits the first refresh itself, with `try_refresh`, as it starts)."""
        while not stopping.is_set():
            await pause(stopping, self._interval)
            if not stopping.is_set():
                await self.try_refresh()

    async def try_refresh(self) -> None:
        """`refresh`, logging a failure instead of raising it: a bug here must not freeze
        health at its last values, nor keep a process from starting. The ops plane awaits the
        first one as it starts, so what it logs (a Redis policy that can evict streams) comes
        before the process says it started."""
        try:
            await self.refresh()
        except Exception:
            log.exception("status refresh failed; trying again next interval")

    async def refresh(self) -> Snapshot:
        """Take a new snapshot (never raises: failures become reasons)."""
        redis = await self._redis_status()
        registered = await self._registry()  # also while Redis is away: it says if PG is up
        if redis.cluster:
            redis = cluster_status.with_topics(redis, self._redis, self._prefix, registered)
        groups = await self._groups(registered) if redis.up else ()
        now = time.monotonic()
        self.snapshot = Snapshot(
            components=tuple(self._probe.components(redis, groups, now)),
            redis=redis,
            outboxes=tuple(self._probe.outboxes()),
            groups=tuple(groups),
            postgres_up=self._registry_read,
        )
        if self._on_change is not None:
            await self._on_change(self.snapshot)
        return self.snapshot

    async def _redis_status(self) -> RedisStatus:
        if redis_client.is_cluster(self._redis):
            nodes = await cluster_status.read_nodes(self._redis)
            for node in nodes:
                if node.up:
                    self._policy_log.saw(node.maxmemory_policy, node.maxmemory)
            return RedisStatus(cluster=True, nodes=nodes, **cluster_status.summary(nodes))
        try:
            async with asyncio.timeout(2):
                started = time.perf_counter()
                await self._redis.ping()
                latency = time.perf_counter() - started
                info = await self._redis.info()
                policy = str(info.get("maxmemory_policy") or await self._policy_by_config())
        except (RedisError, OSError, TimeoutError) as exc:
            return RedisStatus(up=False, error=f"{type(exc).__name__}: {exc}")
        maxmemory = int(info.get("maxmemory", 0))
        self._policy_log.saw(policy, maxmemory)
        return RedisStatus(
            up=True,
            ping_latency=latency,
            used_memory=int(info.get("used_memory", 0)),
            maxmemory=maxmemory,
            maxmemory_policy=policy,
            memory_not_counted=int(info.get("mem_not_counted_for_evict", 0)),
            aof_enabled=bool(int(info.get("aof_enabled", 0))),
            aof_last_rewrite_status=str(info.get("aof_last_bgrewrite_status", "")),
            run_id=str(info.get("run_id", "")),
        )

    async def _policy_by_config(self) -> str:
        """maxmemory-policy from CONFIG GET, asked once (INFO of this Redis does not say it)."""
        if self._config_policy is None:
            try:
                reply = await self._redis.config_get("maxmemory-policy")
                self._config_policy = text(reply.get("maxmemory-policy", b""))
            except ResponseError as exc:  # NOPERM, or CONFIG renamed away
                log.debug("cannot read maxmemory-policy: %r", exc)
                self._config_policy = ""
        return self._config_policy

    async def _registry(self) -> list[RegisteredGroup]:
        """The registered groups; the last ones read when the registry cannot be read now."""
        # A read cut short by cancelling would wait for PostgreSQL to confirm the cancel, which
        # a server that stopped answering never does: refreshes wait for the read, not in it.
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.ensure_future(self._catalog.stream_groups())
        try:
            async with asyncio.timeout(2):
                registered = await asyncio.shield(reading)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Once, unless PostgreSQL is away: the process's outage line says so, with its address.
            quiet = self._registry_failing or unreachable(exc)
            self._registry_failing = True
            self._registry_read = False
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "cannot read the consumer registry: %r",
                exc,
            )
            return self._registered
        finally:
            if reading.done():  # answered or failed, not still waiting: the next one reads anew
                self._reading = None
        self._registered = registered
        self._registry_failing = False
        self._registry_read = True
        return self._registered

    async def _groups(self, registered: Sequence[RegisteredGroup]) -> list[GroupStatus]:
        out = []
        hosts = await members.hosts(self._catalog) if registered else {}
        for g in registered:
            status = await self._group(g.topic, g.group, g.mode, g.members)
            if status is not None:
                key = named_keys(g.topic, self._prefix).events
                found = await members.members(self._redis, key, g.group, hosts)
                out.append(dataclasses.replace(status, members=found))
        return await with_leases(self._catalog.pool, self._redis, self._prefix, out)

    async def _group(self, topic: str, group: str, mode: str, members: int) -> GroupStatus | None:
        key = named_keys(topic, self._prefix).events  # `topic:N`: a partition
        try:
            async with asyncio.timeout(2):
                info = next(
                    (g for g in await self._redis.xinfo_groups(key) if text(g["name"]) == group),
                    None,
                )
                if info is None:
                    return await self._missing(key, topic, group, mode, members)
                oldest = await self._oldest_unacknowledged(key, group, info)
        except (RedisError, OSError, TimeoutError) as exc:
            if not isinstance(exc, ResponseError):
                log.warning("cannot read group %s of %s: %r", group, key, exc)
            return None
        lag = info.get("lag")
        if lag is None:  # Redis cannot tell after deletions: count what is after last-delivered
            try:
                async with asyncio.timeout(2):
                    after = await self._redis.xrange(
                        key, min="(" + text(info["last-delivered-id"]), max="+", count=10_000
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("cannot count the lag of group %s of %s: %r", group, key, exc)
                return None
            lag = len(after)
        age = max(time.time() - oldest, 0.0) if oldest is not None else 0.0
        return GroupStatus(topic, group, int(lag), age, int(info["pending"]), members, mode)

    async def _missing(
        self, key: str, topic: str, group: str, mode: str, members: int
    ) -> GroupStatus:
        """A registered group that Redis no longer has (lost in a restart without persistence,
        destroyed): nothing of the stream was read by it, so its whole stream is its lag, as old
        as the stream's first entry. (An exactly-once group is recreated at 0 and then reads it
        all again; an at-least-once group stopped, and its lag grows until someone acts.)"""
        length = await self._redis.xlen(key)
        first = await self._redis.xrange(key, min="-", max="+", count=1)
        oldest = EntryId.parse(first[0][0]).time if first else None
        age = max(time.time() - oldest, 0.0) if oldest is not None else 0.0
        return GroupStatus(topic, group, int(length), age, 0, members, mode)

    async def _oldest_unacknowledged(self, key: str, group: str, info: Any) -> float | None:
        times = []
        if info["pending"]:
            summary = await self._redis.xpending(key, group)
            if summary["min"] is not None:  # acknowledged since XINFO GROUPS counted them
                times.append(EntryId.parse(summary["min"]).time)
        after = await self._redis.xrange(
            key, min="(" + text(info["last-delivered-id"]), max="+", count=1
        )
        if after:
            times.append(EntryId.parse(after[0][0]).time)
        return min(times) if times else None


def stalled(*, waiting: bool, last_progress: float, now: float, timeout: float) -> str | None:
    """A reason when work is waiting and none was done for `timeout` seconds, else None."""
    idle = now - last_progress
    if waiting and idle > timeout:
        return f"stalled: work waiting, nothing done for {idle:.0f}s (limit {timeout:.0f}s)"
    return None
