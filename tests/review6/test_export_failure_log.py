"""ExportFailureLog rate-limits what the export machinery says while the collector is away
(docs/tracing.md, "One log line per 30 seconds"). It is a filter on whole SDK loggers, so it also
swallows what those loggers say at start-up about the operator's configuration: each bad OTEL_BSP_*
variable is logged at ERROR by the SDK, but past the first they are held back (the process never
says the others were ignored), and the first is relabelled "telemetry export failing"."""

from __future__ import annotations

import os
import subprocess
import sys

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
    (line,) = [x for x in out.splitlines() if "OTEL_BSP_MAX_QUEUE_SIZE" in x]
    assert "export failing" not in line, line
