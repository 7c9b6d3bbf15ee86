"""The client commands (`conveyor dlq ...`, `status`, `health`) start without loading the relay,
the consumer, Alembic or the OpenTelemetry SDK: an operator at a terminal waits for none of them.

The command line does read `relay.settings`, `consumers.settings` and `admin.ops.settings` at
start-up (its options are derived from them), so the engines and the heavy libraries are named
precisely here: loading any of them, or any module inside them, fails the test.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "alembic",
    "sqlalchemy",
    "asyncpg",
    "redis",
    "opentelemetry.sdk",
    "relay.service",
    "relay.forwarder",
    "relay.outbox",
    "consumers.service",
    "consumers.worker",
    "consumers.applier",
    "admin.ops.runtime",
    "admin.migrations",
)


def test_the_cli_loads_no_server_side_modules_until_a_command_needs_them() -> None:
    probe = (
        "import sys; import admin.cli.app; "
        f"heavy = {HEAVY!r}; "
        "print(','.join(sorted({h for h in heavy for m in sys.modules "
        "if m == h or m.startswith(h + '.')})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"loaded at start-up: {done.stdout.strip()}"


def test_the_probe_sees_an_engine_load() -> None:
    probe = "import sys; import admin.cli.app; import consumers; consumers.Consumer; " + (
        "print('consumers.service' in sys.modules, 'redis' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True"]
