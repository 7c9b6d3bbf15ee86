"""The consumer's gather delay: 0 to 1 second, and a wrong value names the flag to fix."""

from __future__ import annotations

import pytest

from admin.cli.consume import CONSUMER
from admin.cli.setting_options import in_flags
from consumers import ConsumerSettings


@pytest.mark.parametrize("seconds", [0.0, 0.001, 1.0])
def test_a_gather_delay_from_0_to_1_second_is_taken(seconds: float) -> None:
    assert ConsumerSettings(group="g", topics=("t",), gather_delay=seconds).gather_delay == seconds


@pytest.mark.parametrize("seconds", [-0.001, 1.5])
def test_a_gather_delay_outside_0_to_1_second_says_which_flag(seconds: float) -> None:
    with pytest.raises(ValueError, match="gather_delay must be 0-1 seconds") as raised:
        ConsumerSettings(group="g", topics=("t",), gather_delay=seconds)
    assert in_flags(str(raised.value), CONSUMER).startswith(
        "--gather-delay (CONVEYOR_GATHER_DELAY) must be 0-1 seconds"
    )
