"""`conveyor demo` runs to completion on the local services and shows its dead letters."""

from __future__ import annotations

import pytest

from tests.processes import run_conveyor

pytestmark = pytest.mark.slow


def test_demo_runs_to_completion(database_url: str, redis_url: str, key_prefix: str) -> None:
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_KEY_PREFIX": key_prefix,
        "COLUMNS": "200",
    }
    result = run_conveyor(["demo", "--events", "150"], env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "produced 150 events" in result.stderr
    assert "150/150" in result.stderr
    assert "rejected" in result.stdout and "max_attempts" in result.stdout
    assert "conveyor dlq reprocess --stream identity.dlq --id" in result.stdout


def test_demo_refuses_a_silly_event_count(database_url: str) -> None:
    result = run_conveyor(["demo", "--events", "0"], {"CONVEYOR_DATABASE_URL": database_url})
    assert result.returncode == 2
    assert "--events must be 1-100000" in result.stderr
