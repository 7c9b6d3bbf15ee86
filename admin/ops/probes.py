"""What relay and consumer processes say about their components, for health and status."""

from __future__ import annotations

from collections.abc import Sequence

from admin.ops.redis_memory import full_reason, policy_reason
from admin.ops.status import ComponentStatus, GroupStatus, OutboxStatus, RedisStatus, State, stalled
from consumers import Consumer
from relay import Relay


def _status(name: str, hard: list[str], soft: list[str]) -> ComponentStatus:
    state: State = "NOT_SERVING" if hard else ("DEGRADED" if soft else "SERVING")
    return ComponentStatus(name, state, tuple(hard + soft))


def _memory(redis: RedisStatus, *, relay: bool) -> tuple[list[str], list[str]]:
    """Reasons from Redis' memory, as (hard, soft): out of memory is hard for a relay (it can
    publish nothing, so it is unready as when Redis is unreachable) and soft for a consumer (it
    still reads and acknowledges, which lets housekeeping trim the streams and free memory);
    a policy that can evict streams is soft for both (they work, until Redis evicts)."""
    hard: list[str] = []
    soft: list[str] = []
    if redis.out_of_memory:
        full = full_reason(redis.used_memory, redis.maxmemory, redis.maxmemory_policy, relay=relay)
        (hard if relay else soft).append(full)
    risky = policy_reason(redis.maxmemory_policy, redis.maxmemory) if redis.up else None
    if risky:
        soft.append(risky)
    return hard, soft


class RelayProbe:
    """Components `conveyor.relay.<schema>`: dependencies up, publishing, not stalled."""

    def __init__(self, relay: Relay, stall_timeout: float) -> None:
        self._relay = relay
        self._stall = stall_timeout

    def components(
        self, redis: RedisStatus, groups: Sequence[GroupStatus], now: float
    ) -> list[ComponentStatus]:
        status = self._relay.status()
        memory_hard, memory_soft = _memory(redis, relay=True)
        out = []
        for forwarder in status.forwarders:
            hard, soft = [], []
            if status.stopping:
                hard.append("shutting down")
            if not redis.up:
                hard.append(f"redis unreachable: {redis.error}")
            hard += memory_hard
            if status.postgres_up is False:
                hard.append("postgres unreachable")
            if forwarder.error:
                hard.append(f"publishing fails: {forwarder.error}")
            reason = stalled(
                waiting=forwarder.backlog is not None and forwarder.backlog.rows > 0,
                last_progress=forwarder.last_progress,
                now=now,
                timeout=self._stall,
            )
            if reason:
                hard.append(reason)
            if status.redis_reset:
                soft.append(status.redis_reset)
            soft += memory_soft
            out.append(_status(f"conveyor.relay.{forwarder.schema}", hard, soft))
        return out

    def outboxes(self) -> list[OutboxStatus]:
        return [
            OutboxStatus(f.schema, f.backlog.rows, f.backlog.oldest_age)
            for f in sorted(self._relay.status().forwarders, key=lambda f: f.schema)
            if f.backlog is not None
        ]


class ConsumerProbe:
    """Components `conveyor.consumer.<topic>.<group>`: worker serving, group present, progress."""

    def __init__(self, consumer: Consumer, stall_timeout: float) -> None:
        self._consumer = consumer
        self._stall = stall_timeout

    def components(
        self, redis: RedisStatus, groups: Sequence[GroupStatus], now: float
    ) -> list[ComponentStatus]:
        status = self._consumer.status()
        by_topic = {g.topic: g for g in groups if g.group == status.group}
        _, memory_soft = _memory(redis, relay=False)
        out = []
        for worker in status.workers:
            hard: list[str] = []
            if status.stopping:
                hard.append("shutting down")
            if not redis.up:
                hard.append(f"redis unreachable: {redis.error}")
            if not status.postgres_up:
                hard.append("postgres unreachable")
            if worker.stopped or not worker.serving:
                hard.append(worker.reason or "not serving")
            stats = by_topic.get(worker.topic)
            waiting = stats is not None and (stats.lag_entries > 0 or stats.pending > 0)
            reason = stalled(
                waiting=waiting,
                last_progress=worker.last_progress,
                now=now,
                timeout=self._stall,
            )
            if reason:
                hard.append(reason)
            out.append(
                _status(f"conveyor.consumer.{worker.topic}.{status.group}", hard, memory_soft)
            )
        return out

    def outboxes(self) -> list[OutboxStatus]:
        return []
