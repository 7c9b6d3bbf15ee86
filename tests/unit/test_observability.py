"""admin.ops.observability: ExportFailureLog rate-limits what the export machinery says while the
collector is away (docs/tracing.md, "One log line per 30 seconds"), and only that: what the SDK
says at start-up about the operator's configuration (each bad OTEL_BSP_* variable, at ERROR) is
left whole, neither held back nor relabelled "telemetry export failing"."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from admin.ops import observability as obs

_CONFIGURE = """
import logging, os
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
from admin.ops import observability
observability.configure("conveyor-review")
os._exit(0)  # no exit flush: nothing was exported, nothing to wait for
"""


def _configure_output(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _CONFIGURE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_every_ignored_sdk_setting_is_reported_at_start_when_exporting() -> None:
    bad = {"OTEL_BSP_MAX_QUEUE_SIZE": "abc", "OTEL_BSP_SCHEDULE_DELAY": "xyz"}
    # The SDK itself logs one ERROR line per bad variable as the span processor is built.
    out = _configure_output(bad | {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    for name in bad:
        assert name in out, f"{name} was ignored without a word:\n{out}"


def test_a_configuration_error_is_not_reported_as_an_export_failure() -> None:
    out = _configure_output(
        {"OTEL_BSP_MAX_QUEUE_SIZE": "abc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    )
    # The SDK logs it with the traceback of int("abc"), whose source line names it too.
    (line,) = [x for x in out.splitlines() if x.startswith("ERROR ") and "OTEL_BSP" in x]
    assert "export failing" not in line, line


def _record(level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("opentelemetry.sdk.trace.export", level, __file__, 1, msg, args, None)


def test_only_export_failures_use_the_interval_budget() -> None:
    now = [100.0]
    failures = obs.ExportFailureLog(30.0, lambda: now[0])
    setting = "Unable to parse value for %s as integer. Defaulting to %s."
    first = _record(logging.ERROR, setting, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
    assert failures.filter(first)
    assert first.getMessage() == (
        "Unable to parse value for OTEL_BSP_MAX_QUEUE_SIZE as integer. Defaulting to 2048."
    )
    failed = _record(logging.ERROR, "Queue full, dropping %s.", "span")
    assert failures.filter(failed), "the first export failure still gets its line"
    assert "0 held back" in failed.getMessage()
    now[0] += 1
    assert not failures.filter(_record(logging.WARNING, "Exception while exporting %s.", "span"))
    assert not failures.filter(_record(logging.WARNING, "Metric collection timed out."))
    later = _record(logging.ERROR, setting, "OTEL_BSP_SCHEDULE_DELAY", 5000)
    assert failures.filter(later), "within the interval, other lines still pass"
    assert "export failing" not in later.getMessage()


_SIGNALS = """
import json, os
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from admin.ops import observability
observability.configure("conveyor-signals")
print(json.dumps([
    isinstance(trace.get_tracer_provider(), TracerProvider),
    isinstance(metrics.get_meter_provider(), MeterProvider),
]))
os._exit(0)
"""


@pytest.mark.parametrize(
    ("endpoints", "traces", "metrics"),
    [
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:1"}, False, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1"}, True, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, True, True),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:2",
            },
            True,
            True,
        ),
        ({}, False, False),
    ],
)
def test_each_signal_is_exported_only_where_an_endpoint_names_it(
    endpoints: dict[str, str], traces: bool, metrics: bool
) -> None:
    """With only the metrics endpoint set, no spans go to the SDK's default localhost:4317."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | endpoints
    done = subprocess.run(
        [sys.executable, "-c", _SIGNALS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [traces, metrics], done.stderr
