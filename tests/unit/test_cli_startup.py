"""The client commands (`conveyor dlq ...`, `status`, `health`) start without loading the relay,
the consumer, Alembic or the OpenTelemetry SDK: an operator at a terminal waits for none of them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("alembic", "sqlalchemy", "relay", "consumers", "redis", "opentelemetry.sdk")


def test_the_cli_loads_no_server_side_modules_until_a_command_needs_them() -> None:
    probe = (
        "import sys; import admin.cli.app; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"loaded at start-up: {done.stdout.strip()}"
