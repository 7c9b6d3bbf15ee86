"""Conversions between the ops plane's plain dataclasses and conveyor.v1 protobuf messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    MetricsData,
    Sum,
)

from admin.status import Snapshot
from conveyor.v1 import admin_pb2

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
            up=r.up, ping_latency_seconds=r.ping_latency, used_memory_bytes=r.used_memory,
            maxmemory_bytes=r.maxmemory, aof_enabled=r.aof_enabled,
            aof_last_rewrite_status=r.aof_last_rewrite_status, run_id=r.run_id, error=r.error,
        ),
        outboxes=[
            admin_pb2.OutboxStatus(schema=o.schema, backlog=o.backlog,
                                   oldest_age_seconds=o.oldest_age)
            for o in snapshot.outboxes
        ],
        groups=[
            admin_pb2.GroupStatus(topic=g.topic, group=g.group, lag_entries=g.lag_entries,
                                  lag_seconds=g.lag_seconds, pending=g.pending,
                                  consumers=g.consumers, mode=g.mode)
            for g in snapshot.groups
        ],
        snapshot_time=timestamp(snapshot.taken_at),
    )  # fmt: skip


def metrics_response(data: MetricsData | None) -> admin_pb2.GetMetricsResponse:
    """GetMetrics from what the in-process metric reader collected."""
    out = admin_pb2.GetMetricsResponse()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.metrics.append(_metric(metric))
    return out


def _metric(metric: Any) -> admin_pb2.Metric:
    m = admin_pb2.Metric(name=metric.name, description=metric.description or "",
                         unit=metric.unit or "")  # fmt: skip
    data = metric.data
    if isinstance(data, Histogram):
        m.kind = admin_pb2.METRIC_KIND_HISTOGRAM
        for p in data.data_points:
            m.points.append(admin_pb2.MetricPoint(
                attributes=_attrs(p.attributes), count=p.count, sum=p.sum,
                explicit_bounds=list(p.explicit_bounds), bucket_counts=list(p.bucket_counts),
            ))  # fmt: skip
        return m
    m.kind = (admin_pb2.METRIC_KIND_COUNTER if isinstance(data, Sum) and data.is_monotonic
              else admin_pb2.METRIC_KIND_GAUGE)  # fmt: skip
    if isinstance(data, Sum | Gauge):
        for point in data.data_points:
            m.points.append(admin_pb2.MetricPoint(attributes=_attrs(point.attributes),
                                                  value=float(point.value)))  # fmt: skip
    return m


def _attrs(attributes: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (attributes or {}).items()}
