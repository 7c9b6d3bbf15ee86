"""OpenTelemetry names shared by every process: meters, instruments, spans and attributes.

Instrument names omit the `_total` and unit suffixes that the Prometheus exporter adds, so
`EVENTS_PUBLISHED` is scraped as `events_published_total` and `OUTBOX_OLDEST_AGE` (unit `s`) as
`outbox_oldest_age_seconds`; docs/metrics.md lists every instrument with its Prometheus name.
"""

from __future__ import annotations

from typing import Final

METER_RELAY: Final = "conveyor.relay"
METER_CONSUMER: Final = "conveyor.consumer"
METER_ADMIN: Final = "conveyor.admin"
TRACER: Final = "conveyor"

# Counters.
EVENTS_PUBLISHED: Final = "events_published"
EVENTS_PUBLISH_FAILED: Final = "events_publish_failed"
EVENTS_REPLAYED: Final = "events_replayed"
EVENTS_CONSUMED: Final = "events_consumed"
EVENTS_PROCESSED: Final = "events_processed"
EVENTS_DUPLICATE: Final = "events_duplicate"
EVENTS_RETRIED: Final = "events_retried"
EVENTS_DLQ: Final = "events_dlq"
EVENTS_REPROCESSED: Final = "events_reprocessed"
EVENTS_TRIMMED: Final = "events_trimmed"
EVENTS_DELETED_PENDING: Final = "events_deleted_pending"
"""Entries deleted or trimmed from the stream while pending: acknowledged, never handled."""
GROUPS_LOST: Final = "consumer_groups_lost"
REDIS_RESETS: Final = "redis_resets"
BATCHES_UNREPLICATED: Final = "batches_unreplicated"

# Gauges.
OUTBOX_BACKLOG: Final = "outbox_backlog"
OUTBOX_OLDEST_AGE: Final = "outbox_oldest_age"
CONSUMER_LAG: Final = "consumer_lag"
CONSUMER_LAG_ENTRIES: Final = "consumer_lag_entries"
CONSUMER_PENDING: Final = "consumer_pending"
DEPENDENCY_UP: Final = "dependency_up"
CONVEYOR_UP: Final = "conveyor_up"
"""1 while the process runs, by role (and group): its absence says the process is gone."""
CONVEYOR_SERVING: Final = "conveyor_serving"
"""1 while the process's readiness (grpc.health.v1 Check "") is SERVING, else 0."""

# Histograms (seconds), with bucket boundaries on the scale of what they measure (the SDK's
# default boundaries, 0 to 10,000, suit milliseconds).
EVENT_PROCESSING_DURATION: Final = "event_processing_duration"
EVENT_END_TO_END_LATENCY: Final = "event_end_to_end_latency"
PROCESSING_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip

# Attribute values.
RESULTS: Final = ("success", "skipped", "duplicate", "dead_letter")
"""Values of ATTR_RESULT on EVENTS_PROCESSED."""
DEPENDENCIES: Final = ("postgres", "redis")
"""Values of ATTR_DEPENDENCY on DEPENDENCY_UP."""
ROLE_RELAY: Final = "relay"
ROLE_CONSUMER: Final = "consumer"

# Attributes.
ATTR_STREAM: Final = "stream"
"""The topic's events stream key, e.g. `conveyor:{orders}:events` (wire.Keys.events); also for
entries a consumer reads from its group's retry stream."""
ATTR_GROUP: Final = "group"
ATTR_RESULT: Final = "result"
ATTR_REASON: Final = "reason"
ATTR_SCHEMA: Final = "schema"
ATTR_DEPENDENCY: Final = "dependency"
ATTR_ROLE: Final = "role"
ATTR_EVENT_ID: Final = "conveyor.event.id"
ATTR_EVENT_TYPE: Final = "conveyor.event.type"
ATTR_BATCH_SIZE: Final = "conveyor.batch.size"
ATTR_MESSAGING_SYSTEM: Final = "messaging.system"
ATTR_MESSAGING_DESTINATION: Final = "messaging.destination.name"

# Spans.
SPAN_ENQUEUE: Final = "conveyor enqueue"
SPAN_RELAY_PUBLISH: Final = "conveyor publish"
SPAN_RELAY_REPLAY: Final = "conveyor replay"
SPAN_PROCESS: Final = "conveyor process"
SPAN_DEAD_LETTER: Final = "conveyor dead_letter"
SPAN_REPROCESS: Final = "conveyor reprocess"

# Span attributes of the OpenTelemetry messaging semantic conventions, and their values.
ATTR_MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
ATTR_MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
ATTR_MESSAGE_ID: Final = "messaging.message.id"
ATTR_CONSUMER_GROUP: Final = "messaging.consumer.group.name"
ATTR_BATCH_MESSAGE_COUNT: Final = "messaging.batch.message_count"
ATTR_ERROR_TYPE: Final = "error.type"
MESSAGING_SYSTEM: Final = "redis"
OPERATION_CREATE: Final = "create"
OPERATION_SEND: Final = "send"
OPERATION_PROCESS: Final = "process"

# Conveyor's own span attributes.
ATTR_ATTEMPT: Final = "conveyor.attempt"
ATTR_LINKS_DROPPED: Final = "conveyor.links.dropped"
"""Sampled producer contexts a batch span could not link, past its cap (MAX_SPAN_LINKS, or the
SDK's OTEL_SPAN_LINK_COUNT_LIMIT when lower)."""
ATTR_RETRY_DELAY: Final = "conveyor.retry.delay_s"
ATTR_DEAD_LETTER_REASON: Final = "conveyor.dead_letter.reason"
ATTR_DEAD_LETTER_ENTRY: Final = "conveyor.dead_letter.entry_id"
ATTR_DRY_RUN: Final = "conveyor.dry_run"
MAX_SPAN_LINKS: Final = 128
"""Links a batch span carries at most: the SDK's default OTEL_SPAN_LINK_COUNT_LIMIT."""

# Span events.
EVENT_RETRY: Final = "conveyor.retry"
EVENT_DEAD_LETTER: Final = "conveyor.dead_letter"

# Header keys carried in Event.headers (W3C trace context plus correlation).
HEADER_TRACEPARENT: Final = "traceparent"
HEADER_TRACESTATE: Final = "tracestate"
HEADER_CORRELATION_ID: Final = "correlation_id"
HEADER_CAUSATION_ID: Final = "causation_id"
