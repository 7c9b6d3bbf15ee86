"""Relay settings refuse bad values with a message naming the value and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

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
