"""The relay's OpenTelemetry instruments and the gauges' last readings."""

from __future__ import annotations

import weakref
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


_SHARED: weakref.WeakKeyDictionary[object, StreamCounter] = weakref.WeakKeyDictionary()
"""Observable counter instrument -> the counts its (first, and only kept) callback reads."""


def _shared_counter(
    meter: metrics.Meter, name: str, description: str, first: Callable[[str], None]
) -> StreamCounter:
    """The counts behind the meter's observable counter `name`, shared by every RelayMetrics on
    it: the SDK registers an instrument once per name and meter, hands later callers the same
    instrument and drops their callbacks, so a second relay in the process (a restart, one per
    database) adds to the counts the first one's callback exports, summed as synchronous
    counters are."""
    counter = StreamCounter(first)
    instrument = meter.create_observable_counter(
        name, [counter.observe], unit="{event}", description=description
    )
    return _SHARED.setdefault(instrument, counter)


class _Gauge:
    """The RelayMetrics an observable gauge reads: every live one on its meter, in the order they
    were built (a later reading of the same series wins), for the reason `_shared_counter`
    gives."""

    def __init__(self, read: Callable[[RelayMetrics], Iterable[Observation]]) -> None:
        self._read = read
        self._members: weakref.WeakValueDictionary[int, RelayMetrics] = (
            weakref.WeakValueDictionary()
        )
        self._next = 0

    def join(self, member: RelayMetrics) -> None:
        self._members[self._next] = member
        self._next += 1

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        for member in tuple(self._members.values()):
            yield from self._read(member)


_GAUGES: weakref.WeakKeyDictionary[object, _Gauge] = weakref.WeakKeyDictionary()


def _shared_gauge(
    meter: metrics.Meter,
    name: str,
    read: Callable[[RelayMetrics], Iterable[Observation]],
    unit: str,
    description: str,
) -> _Gauge:
    gauge = _Gauge(read)
    instrument = meter.create_observable_gauge(
        name, [gauge.observe], unit=unit, description=description
    )
    return _GAUGES.setdefault(instrument, gauge)


class RelayMetrics:
    """Counters the relay adds to, and gauge readings the monitor refreshes."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter(t.METER_RELAY)
        first = self._first_count
        self.published = _shared_counter(
            meter, t.EVENTS_PUBLISHED, "Events appended to their stream", first
        )
        self.publish_failed = _shared_counter(
            meter,
            t.EVENTS_PUBLISH_FAILED,
            "Events whose publish attempt failed and will be retried",
            first,
        )
        self.replayed = _shared_counter(
            meter, t.EVENTS_REPLAYED, "Kept events republished by replay", first
        )
        self.redis_resets = meter.create_counter(
            t.REDIS_RESETS, description="Redis restarts noticed (run id changed)"
        )
        self.redis_resets.add(0)
        self.unreplicated = meter.create_counter(
            t.BATCHES_UNREPLICATED,
            unit="{batch}",
            description="Batches fewer replicas than --wait-replicas acknowledged in time",
        )
        self.unreplicated.add(0)
        self.backlog: dict[str, tuple[int, float]] = {}
        """schema -> (unpublished rows, oldest age in seconds), as last measured."""
        self.dependency_up: dict[str, bool] = {}
        """dependency name ("postgres", "redis") -> reachable at the last attempt."""
        for name, observe, unit, description in (
            (t.OUTBOX_BACKLOG, _backlog, "{event}", "Outbox rows not yet published"),
            (t.OUTBOX_OLDEST_AGE, _age, "s", "Age of the oldest unpublished outbox row"),
            (
                t.DEPENDENCY_UP,
                _dependencies,
                "",
                "1 when the dependency answered the last call, else 0",
            ),
        ):
            _shared_gauge(meter, name, observe, unit, description).join(self)

    def _first_count(self, stream: str) -> None:
        for counter in (self.published, self.publish_failed, self.replayed):
            counter.start(stream)


# Gauge readings run on the thread that collects (a scrape, GetMetrics, the OTLP exporter): they
# read copies, as the pipeline's loop may add a key meanwhile.


def _backlog(metrics: RelayMetrics) -> Iterable[Observation]:
    for schema, (count, _age) in tuple(metrics.backlog.items()):
        yield Observation(count, {t.ATTR_SCHEMA: schema})


def _age(metrics: RelayMetrics) -> Iterable[Observation]:
    for schema, (_count, age) in tuple(metrics.backlog.items()):
        yield Observation(age, {t.ATTR_SCHEMA: schema})


def _dependencies(metrics: RelayMetrics) -> Iterable[Observation]:
    for name, up in tuple(metrics.dependency_up.items()):
        yield Observation(int(up), {t.ATTR_DEPENDENCY: name})
