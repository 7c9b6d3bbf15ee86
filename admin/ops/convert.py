"""Conversions between the ops plane's plain dataclasses and conveyor.v1 protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    MetricsData,
    Sum,
)

from admin.catalog.processes import ABSENT_AFTER, RegisteredProcess
from admin.catalog.records import AuditEntry, DeadLetterRecord, Progress, Skip
from admin.catalog.reports import CountByKey, DeadLetterReport
from admin.catalog.traces import EventTrace
from admin.ops.status import Snapshot
from conveyor import wire
from conveyor.v1 import admin_pb2

__all__ = ["UTC"]

_STATES = {
    "SERVING": admin_pb2.COMPONENT_STATE_SERVING,
    "DEGRADED": admin_pb2.COMPONENT_STATE_DEGRADED,
    "NOT_SERVING": admin_pb2.COMPONENT_STATE_NOT_SERVING,
}


def timestamp(moment: datetime | float | None) -> Timestamp | None:
    """A protobuf Timestamp from a datetime or Unix seconds (None stays None)."""
    if moment is None:
        return None
    ts = Timestamp()
    if isinstance(moment, datetime):
        ts.FromDatetime(moment)
    else:
        ts.FromNanoseconds(int(moment * 1e9))
    return ts


def status_response(snapshot: Snapshot) -> admin_pb2.GetStatusResponse:
    """GetStatus from a snapshot."""
    r = snapshot.redis
    return admin_pb2.GetStatusResponse(
        overall=_STATES[snapshot.overall],
        components=[
            admin_pb2.ComponentStatus(name=c.name, state=_STATES[c.state], reasons=c.reasons)
            for c in snapshot.components
        ],
        redis=admin_pb2.RedisStatus(
            up=r.up,
            ping_latency_seconds=r.ping_latency,
            used_memory_bytes=r.used_memory,
            maxmemory_bytes=r.maxmemory,
            aof_enabled=r.aof_enabled,
            aof_last_rewrite_status=r.aof_last_rewrite_status,
            run_id=r.run_id,
            error=r.error,
            cluster=r.cluster,
            nodes=[
                admin_pb2.RedisNodeStatus(
                    address=n.address,
                    up=n.up,
                    cluster_state=n.cluster_state,
                    ping_latency_seconds=n.ping_latency,
                    used_memory_bytes=n.used_memory,
                    maxmemory_bytes=n.maxmemory,
                    maxmemory_policy=n.maxmemory_policy,
                    aof_enabled=n.aof_enabled,
                    run_id=n.run_id,
                    connected_replicas=n.connected_replicas,
                    topics=list(n.topics),
                    error=n.error,
                )
                for n in r.nodes
            ],
        ),
        outboxes=[
            admin_pb2.OutboxStatus(
                schema=o.schema, backlog=o.backlog, oldest_age_seconds=o.oldest_age
            )
            for o in snapshot.outboxes
        ],
        groups=[
            admin_pb2.GroupStatus(
                topic=g.topic,
                group=g.group,
                lag_entries=g.lag_entries,
                lag_seconds=g.lag_seconds,
                pending=g.pending,
                consumers=g.consumers,
                mode=g.mode,
                members=[
                    admin_pb2.GroupMember(
                        name=m.name,
                        host=m.host,
                        pending=m.pending,
                        idle_seconds=m.idle,
                        inactive_seconds=m.inactive,
                        redelivered=m.redelivered,
                    )
                    for m in g.members
                ],
                lease_owner=g.lease_owner,
                lease_epoch=g.lease_epoch,
                parked_aggregates=g.parked_aggregates,
            )
            for g in snapshot.groups
        ],
        snapshot_time=timestamp(snapshot.taken_at),
    )


def metrics_response(data: MetricsData | None) -> admin_pb2.GetMetricsResponse:
    """GetMetrics from what the in-process metric reader collected."""
    out = admin_pb2.GetMetricsResponse()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.metrics.append(_metric(metric))
    return out


def _metric(metric: Any) -> admin_pb2.Metric:
    m = admin_pb2.Metric(
        name=metric.name, description=metric.description or "", unit=metric.unit or ""
    )
    data = metric.data
    if isinstance(data, Histogram):
        m.kind = admin_pb2.METRIC_KIND_HISTOGRAM
        for p in data.data_points:
            m.points.append(
                admin_pb2.MetricPoint(
                    attributes=_attrs(p.attributes),
                    count=p.count,
                    sum=p.sum,
                    explicit_bounds=list(p.explicit_bounds),
                    bucket_counts=list(p.bucket_counts),
                )
            )
        return m
    m.kind = (
        admin_pb2.METRIC_KIND_COUNTER
        if isinstance(data, Sum) and data.is_monotonic
        else admin_pb2.METRIC_KIND_GAUGE
    )
    if isinstance(data, Sum | Gauge):
        for point in data.data_points:
            m.points.append(
                admin_pb2.MetricPoint(attributes=_attrs(point.attributes), value=float(point.value))
            )
    return m


def _attrs(attributes: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (attributes or {}).items()}


def state_name(state: int) -> str:
    """Catalog name of a DeadLetterState value, e.g. DEAD_LETTER_STATE_OPEN -> open."""
    return str(admin_pb2.DeadLetterState.Name(state)).removeprefix("DEAD_LETTER_STATE_").lower()


def _state_value(name: str) -> int:
    return int(admin_pb2.DeadLetterState.Value("DEAD_LETTER_STATE_" + name.upper()))


def dead_letter(r: DeadLetterRecord) -> admin_pb2.DeadLetter:
    return admin_pb2.DeadLetter(
        id=r.id,
        topic=r.topic,
        entry_id=r.entry_id,
        source_stream=r.source_stream,
        source_entry_id=r.source_entry_id,
        group=r.group,
        consumer=r.consumer or "",
        event_id=r.event_id or "",
        event_type=r.event_type or "",
        reason=wire.reason_value(r.reason),  # type: ignore[arg-type]  # enum ints are valid
        error_class=r.error_class or "",
        error_message=r.error_message or "",
        attempts=r.attempts,
        first_failed_time=timestamp(r.first_failed_at),
        last_failed_time=timestamp(r.last_failed_at),
        create_time=timestamp(r.created_at),
        state=_state_value(r.state),  # type: ignore[arg-type]  # enum ints are valid
        resolution=r.resolution or "",
        resolved_by=r.resolved_by or "",
        retry_of_entry_id=r.retry_of or "",
        retried_as_entry_id=r.retried_as or "",
    )


def audit_record(a: AuditEntry) -> admin_pb2.AuditRecord:
    return admin_pb2.AuditRecord(
        time=timestamp(a.at),
        principal=a.principal,
        action=a.action,
        target_ids=list(a.target_ids),
        reason=a.reason or "",
        outcome=a.outcome,
    )


def _counts(items: tuple[CountByKey, ...]) -> list[admin_pb2.CountByKey]:
    return [admin_pb2.CountByKey(key=c.key, count=c.count) for c in items]


def report_response(r: DeadLetterReport) -> admin_pb2.GetDeadLetterReportResponse:
    return admin_pb2.GetDeadLetterReportResponse(
        total=r.total,
        by_event_type=_counts(r.by_event_type),
        by_reason=_counts(r.by_reason),
        by_group=_counts(r.by_group),
        fingerprints=[
            admin_pb2.ErrorFingerprint(
                error_class=f.error_class,
                message=f.message,
                count=f.count,
                first_seen_time=timestamp(f.first_seen),
                last_seen_time=timestamp(f.last_seen),
            )
            for f in r.fingerprints
        ],
        histogram=[
            admin_pb2.HourCount(hour_time=timestamp(h.hour), count=h.count) for h in r.histogram
        ],
        success_rate=r.success_rate if r.success_rate is not None else 0.0,
        window_start_time=timestamp(r.window_start),
        window_end_time=timestamp(r.window_end),
    )


def trace_response(t: EventTrace) -> admin_pb2.TraceEventResponse:
    out = admin_pb2.TraceEventResponse(unreachable=list(t.unreachable), schemas=list(t.schemas))
    if t.outbox is not None:
        o = t.outbox
        out.outbox.CopyFrom(
            admin_pb2.OutboxRecord(
                schema=o.schema,
                id=o.id,
                topic=o.topic,
                event_type=o.event_type,
                aggregate_type=o.aggregate_type,
                aggregate_id=o.aggregate_id,
                create_time=timestamp(o.created_at),
                publish_time=timestamp(o.published_at),
            )
        )
    out.stream_entries.extend(
        admin_pb2.StreamRecord(stream=s.stream, entry_id=s.entry_id) for s in t.stream_entries
    )
    out.ledger.extend(
        admin_pb2.LedgerRecord(
            schema=x.schema,
            group=x.group,
            result=x.result,
            process_time=timestamp(x.processed_at),
            stream=x.stream,
            entry_id=x.entry_id,
        )
        for x in t.ledger
    )
    out.dead_letters.extend(dead_letter(d) for d in t.dead_letters)
    out.actions.extend(audit_record(a) for a in t.actions)
    return out


def reprocess_response(p: Progress) -> admin_pb2.ReprocessDeadLettersResponse:
    """One progress message of ReprocessDeadLetters; the finished one says why each dead letter
    was skipped."""
    response = admin_pb2.ReprocessDeadLettersResponse(
        done=p.done,
        total=p.total,
        requeued=p.requeued,
        duplicates=p.duplicates,
        skipped=p.skipped,
        finished=p.finished,
        replayed=p.replayed,
    )
    if p.finished:
        response.skips.extend(skipped(s) for s in p.skips)
    return response


def skipped(skip: Skip) -> admin_pb2.SkippedDeadLetter:
    """An admin.catalog Skip as conveyor.v1.SkippedDeadLetter."""
    return admin_pb2.SkippedDeadLetter(
        entry_id=skip.entry_id,
        reason=_SKIP_REASONS.get(skip.reason, admin_pb2.SKIP_REASON_UNSPECIFIED),
        detail=skip.detail,
    )


_SKIP_REASONS = {
    "reprocessing": admin_pb2.SKIP_REASON_REPROCESSING,
    "reprocessed": admin_pb2.SKIP_REASON_REPROCESSED,
    "resolved": admin_pb2.SKIP_REASON_RESOLVED,
    "other_deployment": admin_pb2.SKIP_REASON_OTHER_DEPLOYMENT,
    "gone": admin_pb2.SKIP_REASON_GONE,
    "changed": admin_pb2.SKIP_REASON_CHANGED,
    "earlier_layout": admin_pb2.SKIP_REASON_EARLIER_LAYOUT,
}
"""Every admin.catalog.skips.REASONS value as conveyor.v1.SkipReason."""


_ROLES = {"relay": admin_pb2.PROCESS_ROLE_RELAY, "consumer": admin_pb2.PROCESS_ROLE_CONSUMER}


def processes_response(
    processes: Sequence[RegisteredProcess], key_prefix: str
) -> admin_pb2.ListProcessesResponse:
    """ListProcesses from the registry's rows."""
    return admin_pb2.ListProcessesResponse(
        processes=[
            admin_pb2.RegisteredProcess(
                role=_ROLES.get(p.role, admin_pb2.PROCESS_ROLE_UNSPECIFIED),
                name=p.name,
                group=p.group,
                topics=p.topics,
                schemas=p.schemas,
                mode=p.mode,
                host=p.host,
                pid=p.pid or 0,
                grpc_addr=p.grpc_addr or "",
                start_time=timestamp(p.started_at),
                heartbeat_time=timestamp(p.heartbeat_at),
                heartbeat_age_seconds=p.heartbeat_age,
                absent=p.absent,
            )
            for p in processes
        ],
        absent_after_seconds=ABSENT_AFTER,
        key_prefix=key_prefix,
    )
