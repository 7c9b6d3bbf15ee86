"""What relay and consumer processes say about their components, for health and status."""

from __future__ import annotations

from collections.abc import Sequence

from admin.ops.status import ComponentStatus, GroupStatus, OutboxStatus, RedisStatus, State, stalled
from consumers import Consumer
from relay import Relay


def _status(name: str, hard: list[str], soft: list[str]) -> ComponentStatus:
    state: State = "NOT_SERVING" if hard else ("DEGRADED" if soft else "SERVING")
    return ComponentStatus(name, state, tuple(hard + soft))


class RelayProbe:
    """Components `conveyor.relay.<schema>`: dependencies up, publishing, not stalled."""

    def __init__(self, relay: Relay, stall_timeout: float) -> None:
        self._relay = relay
        self._stall = stall_timeout

    def components(
        self, redis: RedisStatus, groups: Sequence[GroupStatus], now: float
    ) -> list[ComponentStatus]:
        relay = self._relay
        out = []
        for schema, forwarder in relay.forwarders.items():
            hard, soft = [], []
            if relay.stopping:
                hard.append("shutting down")
            if not redis.up:
                hard.append(f"redis unreachable: {redis.error}")
            if relay.metrics.dependency_up.get("postgres") is False:
                hard.append("postgres unreachable")
            if forwarder.last_error:
                hard.append(f"publishing fails: {forwarder.last_error}")
            backlog = relay.metrics.backlog.get(schema, (0, 0.0))[0]
            reason = stalled(
                waiting=backlog > 0,
                last_progress=forwarder.last_progress,
                now=now,
                timeout=self._stall,
            )
            if reason:
                hard.append(reason)
            if relay.redis_reset:
                soft.append(relay.redis_reset)
            out.append(_status(f"conveyor.relay.{schema}", hard, soft))
        return out

    def outboxes(self) -> list[OutboxStatus]:
        backlog = sorted(self._relay.metrics.backlog.items())
        return [OutboxStatus(schema, count, age) for schema, (count, age) in backlog]


class ConsumerProbe:
    """Components `conveyor.consumer.<topic>.<group>`: worker serving, group present, progress."""

    def __init__(self, consumer: Consumer, stall_timeout: float) -> None:
        self._consumer = consumer
        self._stall = stall_timeout

    def components(
        self, redis: RedisStatus, groups: Sequence[GroupStatus], now: float
    ) -> list[ComponentStatus]:
        consumer = self._consumer
        group = consumer.settings.group
        by_topic = {g.topic: g for g in groups if g.group == group}
        out = []
        for topic, worker in consumer.workers.items():
            hard: list[str] = []
            if consumer.stopping:
                hard.append("shutting down")
            if not redis.up:
                hard.append(f"redis unreachable: {redis.error}")
            if worker.health.stopped or not worker.health.serving:
                hard.append(worker.health.reason or "not serving")
            stats = by_topic.get(topic)
            waiting = stats is not None and (stats.lag_entries > 0 or stats.pending > 0)
            reason = stalled(
                waiting=waiting,
                last_progress=worker.health.last_progress,
                now=now,
                timeout=self._stall,
            )
            if reason:
                hard.append(reason)
            out.append(_status(f"conveyor.consumer.{topic}.{group}", hard, []))
        return out

    def outboxes(self) -> list[OutboxStatus]:
        return []
