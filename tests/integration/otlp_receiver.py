"""An OTLP/gRPC receiver for tests, built from opentelemetry-proto's collector services: it keeps
every span and the latest point of every metric series that `conveyor` processes export to it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

SPAN_KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
}


def value(v: AnyValue) -> Any:
    """The Python value of an OTLP attribute value."""
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class Received:
    """One span as received, with the service that sent it and its fields made plain."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str]]
    """(trace id, span id) of each link, as hex."""
    error: bool


def _received(service: str, span: Span) -> Received:
    return Received(
        service=service,
        name=span.name,
        kind=SPAN_KINDS.get(span.kind, "unspecified"),
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        attributes=attributes(span.attributes),
        events=[(e.name, attributes(e.attributes)) for e in span.events],
        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
        error=span.status.code == span.status.STATUS_CODE_ERROR,
    )


def _service(resource_attributes: list[KeyValue]) -> str:
    return str(attributes(resource_attributes).get("service.name", ""))


class Receiver(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    """Keeps what it receives; safe to read while the server's threads write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Received] = []
        self._points: dict[tuple[str, str, frozenset[tuple[str, Any]]], tuple[int, float]] = {}
        self.port = 0

    def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self._spans_of(request)
            return trace_service_pb2.ExportTraceServiceResponse()
        self._metrics_of(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def _spans_of(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        got = [
            _received(_service(rs.resource.attributes), span)
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        with self._lock:
            self._spans += got

    def _metrics_of(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self._lock:
            for rm in request.resource_metrics:
                service = _service(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        which = metric.WhichOneof("data")
                        if which not in {"sum", "gauge"}:
                            continue
                        for point in getattr(metric, which).data_points:
                            key = (
                                service,
                                metric.name,
                                frozenset(attributes(point.attributes).items()),
                            )
                            number = point.as_int if point.HasField("as_int") else point.as_double
                            if point.time_unix_nano >= self._points.get(key, (0, 0.0))[0]:
                                self._points[key] = (point.time_unix_nano, number)

    def spans(self, name: str | None = None) -> list[Received]:
        """Spans received so far (named `name`, if given)."""
        with self._lock:
            return [s for s in self._spans if name is None or s.name == name]

    def metric(self, name: str, **match: str) -> float:
        """The latest value of counter `name`, summed over every series (and service) whose
        attributes include `match`."""
        with self._lock:
            return sum(
                number
                for (_, metric, attrs), (_, number) in self._points.items()
                if metric == name and set(match.items()) <= attrs
            )


@contextmanager
def receiving() -> Iterator[Receiver]:
    """A receiver listening on 127.0.0.1 at a free port (`.port`), stopped after."""
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    receiver.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver
    finally:
        server.stop(grace=None)


def exporting_env(port: int) -> dict[str, str]:
    """Environment making a `conveyor` process export to a receiver at `port`, quickly."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }
