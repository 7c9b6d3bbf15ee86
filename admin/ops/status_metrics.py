"""Gauges read from the ops plane's status snapshot: every consumer group's lag and pending,
the process's own up and serving gauges and, for consumers, whether PostgreSQL and Redis
answer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from admin.catalog.layouts import named_keys
from admin.ops.status import Snapshot
from conveyor import telemetry as t


class StatusGauges:
    """Observable gauges over the latest status snapshot (refreshed every second on the ops
    thread), so a scrape does no I/O.

    Every process's snapshot covers every group registered in the catalog, so each process
    exports the lag of all of them (a group whose consumers are all down still has its lag
    exported, by the relay): aggregate with `max by (stream, group)`. `stream` is the topic's
    events stream key, as on the consumer's counters.
    """

    def __init__(
        self,
        *,
        role: str,
        key_prefix: str,
        group: str | None = None,
        dependencies: bool = False,
        meter: metrics.Meter | None = None,
    ) -> None:
        """`dependencies`: also export dependency_up from the snapshot (consumers; the relay
        exports its own readings, relay.metrics)."""
        meter = meter or metrics.get_meter(t.METER_ADMIN)
        self._prefix = key_prefix
        self._up = {t.ATTR_ROLE: role} | ({t.ATTR_GROUP: group} if group is not None else {})
        self._snapshot: Callable[[], Snapshot] = Snapshot
        self._keys: dict[str, str] = {}
        gauge = meter.create_observable_gauge
        gauge(
            t.CONVEYOR_UP,
            [self._observe_up],
            description="1 while the process runs (its absence says it is gone)",
        )
        gauge(
            t.CONVEYOR_SERVING,
            [self._observe_serving],
            description="1 while the process's readiness is SERVING, else 0 (a process that "
            "runs and does no work: stopped, stalled, cut off from a dependency)",
        )
        gauge(
            t.CONSUMER_LAG,
            [self._observe_lag],
            unit="s",
            description="Age of the oldest entry the group has not acknowledged",
        )
        gauge(
            t.CONSUMER_LAG_ENTRIES,
            [self._observe_lag_entries],
            unit="{entry}",
            description="Entries the group has not yet read",
        )
        gauge(
            t.CONSUMER_PENDING,
            [self._observe_pending],
            unit="{entry}",
            description="Entries read by the group and not yet acknowledged",
        )
        if dependencies:
            gauge(
                t.DEPENDENCY_UP,
                [self._observe_dependencies],
                description="1 when the dependency answered the last call, else 0",
            )

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        """Read the gauges from `snapshot()` from now on (StatusChecker.snapshot)."""
        self._snapshot = snapshot

    def _stream(self, topic: str) -> str:
        key = self._keys.get(topic)
        if key is None:
            key = self._keys[topic] = named_keys(topic, self._prefix).events  # `topic:N` too
        return key

    def _groups(self, value: Callable[..., float]) -> Iterable[Observation]:
        for g in self._snapshot().groups:
            attrs = {t.ATTR_STREAM: self._stream(g.topic), t.ATTR_GROUP: g.group}
            yield Observation(value(g), attrs)

    def _observe_up(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(1, self._up)

    def _observe_serving(self, _options: CallbackOptions) -> Iterable[Observation]:
        snap = self._snapshot()  # as the health service's overall readiness (admin.ops.health)
        serving = bool(snap.components) and snap.overall != "NOT_SERVING"
        yield Observation(int(serving), self._up)

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        return self._groups(lambda g: g.lag_seconds)

    def _observe_lag_entries(self, _options: CallbackOptions) -> Iterable[Observation]:
        return self._groups(lambda g: g.lag_entries)

    def _observe_pending(self, _options: CallbackOptions) -> Iterable[Observation]:
        return self._groups(lambda g: g.pending)

    def _observe_dependencies(self, _options: CallbackOptions) -> Iterable[Observation]:
        snap = self._snapshot()
        if not snap.components:  # not yet refreshed: nothing known
            return
        yield Observation(int(snap.redis.up), {t.ATTR_DEPENDENCY: "redis"})
        if snap.postgres_up is not None:
            yield Observation(int(snap.postgres_up), {t.ATTR_DEPENDENCY: "postgres"})
