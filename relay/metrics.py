"""The relay's OpenTelemetry instruments and the gauges' last readings."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from conveyor import telemetry as t


class RelayMetrics:
    """Counters the relay adds to, and gauge readings the monitor refreshes."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter(t.METER_RELAY)
        self.published = meter.create_counter(
            t.EVENTS_PUBLISHED, unit="{event}", description="Events appended to their stream"
        )
        self.publish_failed = meter.create_counter(
            t.EVENTS_PUBLISH_FAILED,
            unit="{event}",
            description="Events whose publish attempt failed and will be retried",
        )
        self.replayed = meter.create_counter(
            t.EVENTS_REPLAYED, unit="{event}", description="Kept events republished by replay"
        )
        self.redis_resets = meter.create_counter(
            t.REDIS_RESETS, description="Redis restarts noticed (run id changed)"
        )
        self.backlog: dict[str, tuple[int, float]] = {}
        """schema -> (unpublished rows, oldest age in seconds), as last measured."""
        self.dependency_up: dict[str, bool] = {}
        """dependency name ("postgres", "redis") -> reachable at the last attempt."""
        meter.create_observable_gauge(
            t.OUTBOX_BACKLOG,
            [self._observe_backlog],
            unit="{event}",
            description="Outbox rows not yet published",
        )
        meter.create_observable_gauge(
            t.OUTBOX_OLDEST_AGE,
            [self._observe_age],
            unit="s",
            description="Age of the oldest unpublished outbox row",
        )
        meter.create_observable_gauge(
            t.DEPENDENCY_UP,
            [self._observe_dependencies],
            description="1 when the dependency answered the last call, else 0",
        )

    def _observe_backlog(self, _options: CallbackOptions) -> Iterable[Observation]:
        for schema, (count, _age) in self.backlog.items():
            yield Observation(count, {t.ATTR_SCHEMA: schema})

    def _observe_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        for schema, (_count, age) in self.backlog.items():
            yield Observation(age, {t.ATTR_SCHEMA: schema})

    def _observe_dependencies(self, _options: CallbackOptions) -> Iterable[Observation]:
        for name, up in self.dependency_up.items():
            yield Observation(int(up), {t.ATTR_DEPENDENCY: name})
