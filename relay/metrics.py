"""The relay's OpenTelemetry instruments and the gauges' last readings."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from conveyor import telemetry as t


class StreamCounter:
    """A counter by stream, kept as plain integers and read by the SDK when it collects (an
    observable counter): counting costs a dict update, not an SDK measurement per batch. The
    first count of a stream starts every counter of the relay at 0 for it, so each stream's
    series exist (and `increase()` sees its first failure)."""

    __slots__ = ("_counts", "_first")

    def __init__(self, first: Callable[[str], None]) -> None:
        self._first = first
        self._counts: dict[str, int] = {}

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        stream = attributes[t.ATTR_STREAM]
        counts = self._counts
        if stream not in counts:
            self._first(stream)
        counts[stream] += amount

    def start(self, stream: str) -> None:
        """Export the stream's series at 0 (once)."""
        self._counts.setdefault(stream, 0)

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        # Runs on the collecting thread: a copy, as the pipeline's loop may add a stream.
        for stream, count in tuple(self._counts.items()):
            yield Observation(count, {t.ATTR_STREAM: stream})


class RelayMetrics:
    """Counters the relay adds to, and gauge readings the monitor refreshes."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter(t.METER_RELAY)
        self.published = StreamCounter(self._first_count)
        self.publish_failed = StreamCounter(self._first_count)
        self.replayed = StreamCounter(self._first_count)
        for name, counter, description in (
            (t.EVENTS_PUBLISHED, self.published, "Events appended to their stream"),
            (
                t.EVENTS_PUBLISH_FAILED,
                self.publish_failed,
                "Events whose publish attempt failed and will be retried",
            ),
            (t.EVENTS_REPLAYED, self.replayed, "Kept events republished by replay"),
        ):
            meter.create_observable_counter(
                name, [counter.observe], unit="{event}", description=description
            )
        self.redis_resets = meter.create_counter(
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
