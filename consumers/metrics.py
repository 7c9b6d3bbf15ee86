"""The consumer's OpenTelemetry instruments."""

from __future__ import annotations

from opentelemetry import metrics

from conveyor import telemetry as t
from conveyor import wire


class ConsumerMetrics:
    """Counters and histograms a consumer records, by stream and group."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter(t.METER_CONSUMER)
        counter = meter.create_counter
        self.consumed = counter(t.EVENTS_CONSUMED, unit="{event}", description="Entries read")
        self.processed = counter(
            t.EVENTS_PROCESSED, unit="{event}", description="Events finished, by result"
        )
        self.duplicate = counter(
            t.EVENTS_DUPLICATE, unit="{event}", description="Events already applied, acked"
        )
        self.retried = counter(t.EVENTS_RETRIED, unit="{event}", description="Failed, to retry")
        self.dead_lettered = counter(
            t.EVENTS_DLQ, unit="{event}", description="Events moved to the dead-letter stream"
        )
        self.reprocessed = counter(
            t.EVENTS_REPROCESSED,
            unit="{event}",
            description="Dead letters re-delivered by a reprocess request and settled",
        )
        self.deleted_pending = counter(
            t.EVENTS_DELETED_PENDING,
            unit="{event}",
            description="Entries deleted or trimmed while pending: acknowledged, never handled",
        )
        self.trimmed = counter(
            t.EVENTS_TRIMMED, unit="{event}", description="Entries removed by the length cap"
        )
        self.groups_lost = counter(t.GROUPS_LOST, description="Consumer groups found missing")
        self.processing = meter.create_histogram(
            t.EVENT_PROCESSING_DURATION,
            unit="s",
            description="Batch apply time per event, one observation per batch",
            explicit_bucket_boundaries_advisory=t.PROCESSING_BUCKETS,
        )
        self.end_to_end = meter.create_histogram(
            t.EVENT_END_TO_END_LATENCY,
            unit="s",
            description="Event time to applied, of each batch's oldest applied event",
            explicit_bucket_boundaries_advisory=t.LATENCY_BUCKETS,
        )

    def start(self, stream: str, group: str) -> None:
        """Export every counter of one topic's worker at 0, so its series exist before the first
        event (and `increase()` sees the first dead letter or lost group)."""
        attrs = topic_attributes(stream, group)
        for instrument in (
            self.consumed,
            self.duplicate,
            self.retried,
            self.reprocessed,
            self.deleted_pending,
            self.groups_lost,
        ):
            instrument.add(0, attrs)
        for result in t.RESULTS:
            self.processed.add(0, {**attrs, t.ATTR_RESULT: result})
        for reason in wire.REASONS:
            self.dead_lettered.add(0, {**attrs, t.ATTR_REASON: reason})
        self.trimmed.add(0, {t.ATTR_STREAM: stream})


def topic_attributes(stream: str, group: str) -> dict[str, str]:
    """The attributes every count of one topic's worker carries."""
    return {t.ATTR_STREAM: stream, t.ATTR_GROUP: group}
