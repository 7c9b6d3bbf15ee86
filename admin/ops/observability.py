"""OpenTelemetry set-up for `conveyor` processes: SDK providers exporting over OTLP/gRPC, the
sampler, a bounded flush at exit, and one log line per interval while the collector is away."""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler

from admin.errors import InvalidInput
from conveyor.outages import OUTAGE_LOG_INTERVAL
from conveyor.sampling import ConveyorSampler

log = logging.getLogger(__name__)

Signal = Literal["traces", "metrics"]

_ENDPOINT_VARS = {
    "traces": ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    "metrics": ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
}
RATIO_VAR = "CONVEYOR_TRACE_SAMPLE_RATIO"
DEFAULT_RATIO = 0.01
"""Share of root spans sampled (events enqueued outside any trace, relay batches)."""
EXIT_FLUSH_TIMEOUT = 5.0
"""Seconds a stopping process gives its last spans and metrics to reach the collector."""
EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk.metrics._internal.export",
)
"""Loggers of the SDK's export machinery: a collector that is away makes them speak per export."""
EXPORT_FAILURES = (
    "Failed to export",  # the OTLP exporter gave up on a batch
    "Transient error",  # ... and retries it
    "Exception while exporting",  # the batch processor's or metric reader's exporter raised
    "Queue full",  # the batch processor dropped a span
    "Queue is full",  # ... in SDKs before 1.34
    "Metric collection timed out",  # a metric export outlasted its timeout
)
"""How the messages of those loggers about a failed export begin (their format strings)."""


def exporting(environ: Mapping[str, str], signal: Signal | None = None) -> bool:
    """Whether `signal` ("traces" or "metrics"; None: either) is exported over OTLP: an endpoint
    variable for it (OTEL_EXPORTER_OTLP_ENDPOINT or the signal's own) is set and
    OTEL_SDK_DISABLED is not true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    signals = _ENDPOINT_VARS.values() if signal is None else [_ENDPOINT_VARS[signal]]
    return any(environ.get(v) for names in signals for v in names)


def sample_ratio(environ: Mapping[str, str]) -> float:
    """CONVEYOR_TRACE_SAMPLE_RATIO as a float from 0 to 1 (DEFAULT_RATIO when unset or empty);
    InvalidInput (a ValueError) naming the variable otherwise."""
    text = environ.get(RATIO_VAR, "").strip()
    if not text:
        return DEFAULT_RATIO
    try:
        ratio = float(text)
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:  # also refuses nan
        raise InvalidInput(
            f"invalid {RATIO_VAR}={text[:64]!r}: use a number from 0 to 1, e.g. 0.01 to sample "
            "1 % of the traces that start in Conveyor",
            field=RATIO_VAR,
            value=text[:64],
        )
    return ratio


def sampler(environ: Mapping[str, str]) -> Sampler | None:
    """The tracer provider's sampler: None when OTEL_TRACES_SAMPLER is set (the SDK then builds
    the standard one it names, with OTEL_TRACES_SAMPLER_ARG); else conveyor.sampling's
    parent-based sampler, with roots sampled when a link is sampled, else at
    CONVEYOR_TRACE_SAMPLE_RATIO. The ratio is checked either way, so a typo fails at start."""
    ratio = sample_ratio(environ)
    if environ.get("OTEL_TRACES_SAMPLER", "").strip():
        return None
    return ConveyorSampler(ratio)


class ExportFailureLog(logging.Filter):
    """Lets one WARNING-or-worse line about a failed export (`EXPORT_FAILURES`) through per
    `interval` seconds, saying how many it held back since the last, without a traceback: a
    collector that is away fails every export, and a line per export (or per dropped span)
    would bury everything else. Any other line (below WARNING, or about something else, such as
    a bad OTEL_BSP_* setting) passes untouched and uses none of the budget."""

    def __init__(
        self, interval: float = OUTAGE_LOG_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()  # the exporters log from their own threads
        self._next = -math.inf
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not (
            isinstance(record.msg, str) and record.msg.startswith(EXPORT_FAILURES)
        ):
            return True
        with self._lock:
            now = self._clock()
            if now < self._next:
                self._held += 1
                return False
            held, self._held = self._held, 0
            self._next = now + self._interval
        record.msg = (
            f"telemetry export failing, spans and metrics may be dropped (one line per "
            f"{self._interval:g}s, {held} held back since the last): {record.getMessage()}"
        )
        record.args = None
        record.exc_info = record.exc_text = None
        return True


def configure(service_name: str, readers: list[MetricReader] | None = None) -> bool:
    """Install SDK tracer and meter providers exporting over OTLP as the standard OTEL_*
    environment variables configure them (and OTEL_SDK_DISABLED is not true), plus any extra
    metric `readers`: traces when OTEL_EXPORTER_OTLP_ENDPOINT or ..._TRACES_ENDPOINT is set,
    metrics when OTEL_EXPORTER_OTLP_ENDPOINT or ..._METRICS_ENDPOINT is. Returns whether traces
    are exported. Without an endpoint the OpenTelemetry API stays a no-op, costing the pipeline
    nothing. InvalidInput (a ValueError) for a CONVEYOR_TRACE_SAMPLE_RATIO that is not a number
    from 0 to 1, checked whether or not anything is exported."""
    chosen = sampler(os.environ)
    traces_on, metrics_on = exporting(os.environ, "traces"), exporting(os.environ, "metrics")
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    all_readers = list(readers or [])
    flush: list[Callable[[], object]] = []
    stop: list[Callable[[], object]] = []
    exported: list[str] = []
    if metrics_on:
        metric_exporter = OTLPMetricExporter()
        all_readers.append(PeriodicExportingMetricReader(metric_exporter))
        stop.append(metric_exporter.shutdown)
        exported.append("metrics")
    if traces_on:
        exporter = OTLPSpanExporter()
        provider = TracerProvider(resource=resource, sampler=chosen, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        flush.append(provider.shutdown)
        stop.append(exporter.shutdown)
        exported.insert(0, f"traces (sampler {provider.sampler.get_description()})")
    if exported:
        # Only now: what the SDK says of the OTEL_* settings as it builds these is left whole.
        failures = ExportFailureLog()
        for name in EXPORT_LOGGERS:
            logging.getLogger(name).addFilter(failures)
        log.info("exporting %s over OTLP as service %s", " and ".join(exported), service_name)
    if all_readers:
        meters = MeterProvider(
            resource=resource, metric_readers=all_readers, shutdown_on_exit=not metrics_on
        )
        metrics.set_meter_provider(meters)
        if metrics_on:
            flush.append(meters.shutdown)
    if flush:
        atexit.register(shutdown, flush, stop, EXIT_FLUSH_TIMEOUT)
    return traces_on


def shutdown(
    flush: Sequence[Callable[[], object]], stop: Sequence[Callable[[], object]], timeout: float
) -> bool:
    """Flush and shut down the providers (`flush`) in a thread, for at most `timeout` seconds
    in all; past that, stop the exporters (`stop`: their retries end) and return False. A
    collector that is away thus delays a stopping process by `timeout` at most."""

    def run() -> None:
        for f in flush:
            try:
                f()
            except Exception:
                log.warning("telemetry shutdown failed", exc_info=True)

    worker = threading.Thread(target=run, name="conveyor-telemetry-exit", daemon=True)
    worker.start()
    worker.join(timeout)
    if not worker.is_alive():
        return True
    log.warning(
        "telemetry not flushed within %gs of stopping; the spans and metrics not yet exported "
        "are dropped",
        timeout,
    )
    for s in stop:
        try:
            s()
        except Exception:
            log.debug("exporter shutdown failed", exc_info=True)
    worker.join(1.0)
    return False
