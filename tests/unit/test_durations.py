"""Durations and times typed on the command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from admin.cli.durations import format_duration, parse_duration, parse_since


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("90", 90),
        ("1.5", 1.5),
        ("30m", 1800),
        ("24h", 86400),
        ("1d12h", 129600),
        ("2w", 1209600),
        (" 5S ", 5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "1x", "-5", "h", "10m5", "inf", "nan", "1h-1m"])
def test_bad_durations_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("5x", "invalid --startup-timeout '5x': use seconds"),
        ("inf", "invalid --startup-timeout 'inf': use a finite duration"),
        ("-1", "invalid --startup-timeout '-1': must be zero or more"),
    ],
)
def test_a_bad_duration_names_its_option(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        parse_duration(text, "--startup-timeout")


def test_since_accepts_iso_and_ago() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("2026-11-29T05:00:00Z", now) == datetime(2026, 11, 29, 5, tzinfo=UTC)
    assert parse_since("2026-11-29 05:00", now) == datetime(2026, 11, 29, 5, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "2030-01-01T00:00:00Z"])
def test_since_rejects_nonsense_and_the_future(text: str) -> None:
    with pytest.raises(ValueError, match="invalid time"):
        parse_since(text, datetime(2026, 11, 29, tzinfo=UTC))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (0.1, "0.1s"),
        (30, "30s"),
        (60, "60s"),
        (90, "90s"),
        (300, "5m"),
        (3600, "1h"),
        (5400, "90m"),
        (86400, "24h"),
        (172800, "2d"),
        (2592000, "30d"),
    ],
)
def test_durations_format_as_people_write_them_and_read_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("seconds", [0.001, 1 / 3, 59.75, 1e-9, 123456.789])
def test_any_duration_reads_back_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan")])
def test_impossible_durations_do_not_format(seconds: float) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        format_duration(seconds)
