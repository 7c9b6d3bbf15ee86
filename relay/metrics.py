"""The relay's OpenTelemetry instruments and the gauges' last readings."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Counter, Observation

from conveyor import telemetry as t


class StreamCounter:
    """A counter by stream; the first count of a stream starts every counter of the relay at 0
    for it, so each stream's series exist (and `increase()` sees its first failure)."""

    __slots__ = ("_counter", "_first", "_seen")

    def __init__(self, counter: Counter, first: Callable[[str], None]) -> None:
        self._counter = counter
        self._first = first
        self._seen: set[str] = set()

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        stream = attributes[t.ATTR_STREAM]
        if stream not in self._seen:
            self._first(stream)
        self._counter.add(amount, attributes)

    def start(self, stream: str) -> None:
        """Export the stream's series at 0 (once)."""
        if stream not in self._seen:
            self._seen.add(stream)
            self._counter.add(0, {t.ATTR_STREAM: stream})


class RelayMetrics:
    """Counters the relay adds to, and gauge readings the monitor refreshes."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter(t.METER_RELAY)
        counter = meter.create_counter
        self.published = StreamCounter(
            counter(
                t.EVENTS_PUBLISHED, unit="{event}", description="Events appended to their stream"
            ),
            self._first_count,
        )
        self.publish_failed = StreamCounter(
            counter(
                t.EVENTS_PUBLISH_FAILED,
                unit="{event}",
                description="Events whose publish attempt failed and will be retried",
            ),
            self._first_count,
        )
        self.replayed = StreamCounter(
            counter(
                t.EVENTS_REPLAYED, unit="{event}", description="Kept events republished by replay"
            ),
            self._first_count,
        )
        self.redis_resets = counter(
            t.REDIS_RESETS, description="Redis restarts noticed (run id changed)"
        )
        self.redis_resets.add(0)
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

    def _first_count(self, stream: str) -> None:
        for counter in (self.published, self.publish_failed, self.replayed):
            counter.start(stream)

    # Callbacks run on the thread that collects (a scrape, GetMetrics, the OTLP exporter): they
    # read copies, as the pipeline's loop may add a key meanwhile.

    def _observe_backlog(self, _options: CallbackOptions) -> Iterable[Observation]:
        for schema, (count, _age) in tuple(self.backlog.items()):
            yield Observation(count, {t.ATTR_SCHEMA: schema})

    def _observe_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        for schema, (_count, age) in tuple(self.backlog.items()):
            yield Observation(age, {t.ATTR_SCHEMA: schema})

    def _observe_dependencies(self, _options: CallbackOptions) -> Iterable[Observation]:
        for name, up in tuple(self.dependency_up.items()):
            yield Observation(int(up), {t.ATTR_DEPENDENCY: name})
