"""OpenTelemetry set-up for `conveyor` processes: SDK providers exporting over OTLP/gRPC."""

from __future__ import annotations

import logging
import os

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)

_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


def configure(service_name: str, readers: list[MetricReader] | None = None) -> bool:
    """Install SDK tracer and meter providers when an OTLP endpoint is configured through the
    standard OTEL_* environment variables (and OTEL_SDK_DISABLED is not true), plus any extra
    metric `readers`. Returns whether traces are exported. Without an endpoint the OpenTelemetry
    API stays a no-op, costing the pipeline nothing."""
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
    exporting = not disabled and any(os.environ.get(v) for v in _ENDPOINT_VARS)
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    all_readers = list(readers or [])
    if exporting:
        all_readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        log.info("exporting traces and metrics over OTLP as service %s", service_name)
    if all_readers:
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=all_readers))
    return exporting
