"""Review of the relay's observable counters: a process that builds a second RelayMetrics."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from conveyor import telemetry
from relay.metrics import RelayMetrics

STREAM = "conveyor:{identity}:events"


def _published(reader: InMemoryMetricReader) -> float:
    data = reader.get_metrics_data()
    assert data is not None
    return sum(
        point.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == telemetry.EVENTS_PUBLISHED
        for point in metric.data.data_points
        if point.attributes.get(telemetry.ATTR_STREAM) == STREAM
    )


def test_a_second_relay_in_the_same_process_has_its_events_counted() -> None:
    """An embedded application runs `Relay(settings)` again in the same process (after a stop,
    or one per database): each builds `RelayMetrics()` on the same meter. With the counters now
    observable, the SDK hands the second one the instrument the first registered and drops its
    callback: the export keeps reading the first relay's (frozen) totals and never counts the
    second's events. The synchronous counters of before were shared by name and summed both."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = RelayMetrics(provider.get_meter(telemetry.METER_RELAY))
    first.published.add(3, {telemetry.ATTR_STREAM: STREAM})
    assert _published(reader) == 3
    second = RelayMetrics(provider.get_meter(telemetry.METER_RELAY))  # e.g. the relay restarted
    second.published.add(5, {telemetry.ATTR_STREAM: STREAM})
    assert _published(reader) == 8, "the second relay's 5 events are not exported"
