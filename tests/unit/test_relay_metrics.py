"""The relay's observable instruments when a process builds more than one RelayMetrics."""

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
    or one per database): each builds `RelayMetrics()` on the same meter. The SDK hands the
    second one the observable counter the first registered and drops its callback, so both add
    to the counts that callback reads: the export sums them, as synchronous counters would."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = RelayMetrics(provider.get_meter(telemetry.METER_RELAY))
    first.published.add(3, {telemetry.ATTR_STREAM: STREAM})
    assert _published(reader) == 3
    second = RelayMetrics(provider.get_meter(telemetry.METER_RELAY))  # e.g. the relay restarted
    second.published.add(5, {telemetry.ATTR_STREAM: STREAM})
    assert _published(reader) == 8, "the second relay's 5 events are not exported"


def test_a_second_relay_in_the_same_process_has_its_backlog_exported() -> None:
    """The gauges too: each live RelayMetrics on the meter is read, the later one last."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = RelayMetrics(provider.get_meter(telemetry.METER_RELAY))
    second = RelayMetrics(provider.get_meter(telemetry.METER_RELAY))
    first.backlog["app"] = (4, 1.0)
    second.backlog["billing"] = (7, 2.0)
    data = reader.get_metrics_data()
    assert data is not None
    found = {
        point.attributes[telemetry.ATTR_SCHEMA]: point.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == telemetry.OUTBOX_BACKLOG
        for point in metric.data.data_points
    }
    assert found == {"app": 4, "billing": 7}
