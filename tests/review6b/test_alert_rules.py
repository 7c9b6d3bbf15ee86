"""The alert rules of deploy/observability/conveyor-alerts.yml on series shaped like what the
processes really serve (see test_status_gauges.py for the served values), with promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.monitoring_kit import RULES

LOST_GROUP = Path(__file__).with_name("lost_group.test.yml")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install prometheus")
    return path


def test_an_at_least_once_group_lost_for_good_is_not_forgotten_after_30_minutes(
    tmp_path: Path,
) -> None:
    """An at-least-once group that Redis lost stops for good: its consumer stays up (not
    serving), nothing reads the topic again. ConveyorConsumerGroupLost looks at the last 30
    minutes only, ConveyorConsumerLagHigh sees the lag of 0 that the gauges serve for a missing
    group, ConveyorConsumerGroupAbsent sees conveyor_up 1: 30 minutes after the loss no alert
    fires although the topic is not consumed at all."""
    shutil.copy(RULES, tmp_path / RULES.name)
    shutil.copy(LOST_GROUP, tmp_path / "lost.test.yml")
    done = subprocess.run(
        [_promtool(), "test", "rules", "lost.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
