"""Relay and consumer settings: bad values refused with a message naming the value and what is
allowed, and the policies built from good ones."""

from __future__ import annotations

from typing import Any

import pytest

from admin.cli import consume, options
from admin.cli.setting_options import in_flags
from consumers.settings import ConsumerSettings
from relay import RelaySettings


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schemas": ()}, "at least one schema"),
        ({"schemas": ("Bad-Name",)}, "invalid schema name"),
        ({"schemas": ("a", "a")}, "must not repeat"),
        ({"batch_size": 0}, "batch_size must be 1-100000"),
        ({"concurrency": 99}, "concurrency must be 1-16"),
        ({"retention": -1.0}, "retention must be >= 0"),
        ({"poll_interval": 0.0}, "poll_interval must be a number > 0"),
        ({"key_prefix": "x{y}"}, "invalid key prefix"),
        ({"backoff_initial": 5.0, "backoff_max": 1.0}, "backoff_max"),
    ],
)
def test_bad_settings(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RelaySettings(**change)


def test_defaults_are_valid() -> None:
    s = RelaySettings()
    assert s.schemas == ("public",)
    assert s.retention == 86400.0


def test_a_sub_microsecond_handler_backoff_gives_a_policy_of_a_microsecond() -> None:
    """Settings accept any backoff > 0; one below a timedelta's resolution must not round to a
    zero wait that RetryPolicy refuses (the consumer would fail at start on valid settings)."""
    settings = ConsumerSettings(group="g", topics=("t",), retry_backoff=1e-7)
    assert settings.retry_policy.ceiling(1) == pytest.approx(1e-6)
    assert settings.redelivery_window > 0


def test_a_sub_microsecond_relay_backoff_gives_a_policy_of_a_microsecond() -> None:
    settings = RelaySettings(backoff_initial=1e-7)
    assert settings.retry_policy.ceiling(1) == pytest.approx(1e-6)


def test_settings_errors_name_options_not_fields() -> None:
    shown = in_flags(
        "retry_backoff_max must be >= retry_backoff", consume.CONSUMER, options.STARTUP
    )
    assert shown == (
        "--retry-backoff-max (CONVEYOR_RETRY_BACKOFF_MAX) must be >= "
        "--retry-backoff (CONVEYOR_RETRY_BACKOFF)"
    )
    # one-word fields only where the message starts with them: "group" is also a plain word
    assert in_flags("group name 'x y' is invalid", consume.CONSUMER).startswith("--group (")
    assert in_flags("a consumer group must be named", consume.CONSUMER) == (
        "a consumer group must be named"
    )
