"""A bad CONVEYOR_TRACE_SAMPLE_RATIO stops every `conveyor` command that sets up telemetry with
a usage error naming the variable (docs/tracing.md: "A value that is not a number from 0 to 1
stops the process at start, naming the variable"), as `conveyor relay` does."""

from __future__ import annotations

from tests.integration.conftest import Case
from tests.processes import run_conveyor

EXIT_USAGE = 2


def test_relay_replay_refuses_a_bad_ratio_as_a_usage_error_like_the_relay(case: Case) -> None:
    env = case.env | {"CONVEYOR_TRACE_SAMPLE_RATIO": "2"}
    relay = run_conveyor(["relay", "--schema", case.schema], env, timeout=60)
    assert relay.returncode == EXIT_USAGE, relay.stdout + relay.stderr
    replay = run_conveyor(["relay", "replay", "--since", "1h", "--dry-run"], env)
    output = replay.stdout + replay.stderr
    assert "CONVEYOR_TRACE_SAMPLE_RATIO" in output
    assert "Traceback" not in output, output[-1500:]
    assert replay.returncode == EXIT_USAGE, output[-1500:]
