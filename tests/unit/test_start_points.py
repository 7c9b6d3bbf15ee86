"""`--start`: the start points people type and the stream ids a group is created at."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from admin.cli.start_point import parse_start
from consumers.settings import ConsumerSettings

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@pytest.mark.parametrize(
    ("typed", "start", "start_id"),
    [
        ("earliest", "earliest", "0"),
        ("Latest", "latest", "$"),
        ("2h", f"{NOW_MS - 7_200_000}-0", f"{NOW_MS - 7_200_001}-{2**64 - 1}"),
        ("2026-12-03T11:30:00Z", f"{NOW_MS - 1_800_000}-0", f"{NOW_MS - 1_800_001}-{2**64 - 1}"),
        ("2026-12-03T11:30:00", f"{NOW_MS - 1_800_000}-0", f"{NOW_MS - 1_800_001}-{2**64 - 1}"),
        ("1970-01-01T00:00:00Z", "0-0", "0"),
    ],
)
def test_a_start_point_becomes_the_id_the_group_is_created_at(
    typed: str, start: str, start_id: str
) -> None:
    assert parse_start(typed, NOW) == start
    settings = ConsumerSettings(group="g", topics=("t",), start=start)
    assert settings.start_id == start_id


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("soon", "use earliest, latest, an ISO 8601 time"),
        ("", "use earliest, latest, an ISO 8601 time"),
        ("-2h", "use earliest, latest, an ISO 8601 time"),
        ("2027-01-01T00:00:00Z", "use earliest, latest, an ISO 8601 time"),
        ("1960-01-01T00:00:00Z", "it is before 1970"),
    ],
)
def test_a_bad_start_point_is_refused_naming_the_flag(typed: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid --start") as refused:
        parse_start(typed, NOW)
    assert why in str(refused.value)


@pytest.mark.parametrize("start", ["2h", "$", "0", "1-", "-1-0", "first"])
def test_settings_take_only_named_points_and_entry_ids(start: str) -> None:
    with pytest.raises(ValueError, match="start must be earliest, latest or a stream entry id"):
        ConsumerSettings(group="g", topics=("t",), start=start)


def test_the_default_never_skips_what_the_stream_holds() -> None:
    assert ConsumerSettings(group="g", topics=("t",)).start_id == "0"
