"""Entry ids and reply values as both engines read them from Redis."""

from __future__ import annotations

import uuid

import pytest

from conveyor.entry_ids import EXAMPLE, MAX_SEQUENCE, EntryId
from conveyor.replies import text, uuid_or_none


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"1700000000000-3", EntryId(1700000000000, 3)),
        ("1700000000000-3", EntryId(1700000000000, 3)),
        ("0-0", EntryId(0, 0)),
        ("1700000000000", EntryId(1700000000000, 0)),
        (f"5-{MAX_SEQUENCE}", EntryId(5, MAX_SEQUENCE)),
    ],
)
def test_ids_parse_from_bytes_or_text(value: bytes | str, expected: EntryId) -> None:
    assert EntryId.parse(value) == expected


def test_ids_compare_in_stream_order_not_as_text() -> None:
    ids = ["10-0", "9-5", "9-10", "100-0"]
    assert [str(i) for i in sorted(map(EntryId.parse, ids))] == ["9-5", "9-10", "10-0", "100-0"]


def test_the_id_after_one_is_the_next_sequence_or_the_next_millisecond() -> None:
    assert EntryId.parse("7-1").after() == EntryId(7, 2)
    assert EntryId(7, MAX_SEQUENCE).after() == EntryId(8, 0)
    assert EntryId(7, MAX_SEQUENCE) < EntryId(7, MAX_SEQUENCE).after()


def test_an_id_tells_the_unix_time_its_entry_was_added_at() -> None:
    assert EntryId.parse(b"1700000000250-7").time == 1_700_000_000.25


def test_an_id_prints_as_redis_spells_it() -> None:
    assert str(EntryId(1700000000000, 12)) == "1700000000000-12"


@pytest.mark.parametrize("value", ["", "-1", "a-b", "1-x"])
def test_a_malformed_id_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        EntryId.parse(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000000-0", EntryId(1700000000000, 0)),
        ("0-0", EntryId(0, 0)),
        ("007-01", EntryId(7, 1)),
        (f"{MAX_SEQUENCE}-{MAX_SEQUENCE}", EntryId(MAX_SEQUENCE, MAX_SEQUENCE)),
    ],
)
def test_a_given_id_parses_strictly_to_its_normal_form(value: str, expected: EntryId) -> None:
    assert EntryId.parse_strict(value) == expected
    assert str(EntryId.parse_strict(value)) == str(expected)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "1700000000000",  # the sequence part is required of people, unlike of Redis replies
        "1700000000000-",
        "-0",
        "+1-0",
        "1--0",
        " 1-0",
        "1-0\n",
        "1_000-0",
        "\u0661\u0662-\u0663",  # Arabic-Indic digits: int() reads them, Redis does not
        "\uff11-\uff10",  # fullwidth digits
        f"{MAX_SEQUENCE + 1}-0",
        f"0-{MAX_SEQUENCE + 1}",
        "1" * 21 + "-0",
        "1-0" * 10_000,
    ],
)
def test_anything_else_is_refused_strictly_saying_what_an_id_looks_like(value: str) -> None:
    with pytest.raises(ValueError, match=f"use <milliseconds>-<sequence>, e.g. {EXAMPLE}$"):
        EntryId.parse_strict(value)


def test_reply_values_become_text() -> None:
    assert text(b"consumer-1") == "consumer-1"
    assert text("consumer-1") == "consumer-1"


def test_uuid_or_none_takes_only_a_uuid() -> None:
    value = "0190c1f8-9f6e-7b7a-8d1e-3f2a4b5c6d7e"
    assert uuid_or_none(value) == uuid.UUID(value)
    assert uuid_or_none(value.upper()) == uuid.UUID(value)
    assert uuid_or_none(None) is None
    assert uuid_or_none("") is None
    assert uuid_or_none("not-a-uuid") is None
