"""The ops plane's catalog queries (listing, paging, single rows, resolve, state), and deployments
sharing one catalog kept apart, on real PG."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from admin.catalog import Catalog, DeadLetterQuery, DeadLetterRecord, reports
from admin.catalog import dead_letters as catalog
from admin.catalog.audit import audit_entries
from admin.catalog.pages import encode_page_token
from admin.catalog.records import parse_entry_id
from admin.errors import InvalidInput
from conveyor import wire
from tests.integration.catalog_support import (
    NOW,
    PREFIX,
    add,
    fixture_catalog_url,  # noqa: F401 - a pytest fixture
    fixture_pool,  # noqa: F401 - a pytest fixture
    fixture_topic,  # noqa: F401 - a pytest fixture
    new_entry_id,
)

KEY = b"k" * 32


async def ids(pool: asyncpg.Pool, query: DeadLetterQuery, page_size: int = 1000) -> list[int]:
    records, token = await Catalog(pool, PREFIX).list_dead_letters(
        query, page_size=page_size, page_token=None, token_key=KEY
    )
    assert token is None
    return [r.id for r in records]


# --- listing ---------------------------------------------------------------------------------


async def test_each_filter_selects_its_rows(pool: asyncpg.Pool, topic: str) -> None:
    base = await add(pool, topic)
    typed = await add(pool, topic, event_type="conveyor.test.v1.Other")
    rejected = await add(pool, topic, reason="rejected")
    grouped = await add(pool, topic, consumer_group="billing")
    erred = await add(pool, topic, error_message="Connection REFUSED by db")
    old = await add(pool, topic, created_at=NOW - timedelta(days=2))
    resolved = await add(pool, topic, state="resolved")
    everything = [r["id"] for r in (resolved, old, erred, grouped, rejected, typed, base)]

    assert await ids(pool, DeadLetterQuery(topic=topic)) == everything, "newest first"
    q = DeadLetterQuery(topic=topic, event_type="conveyor.test.v1.Other")
    assert await ids(pool, q) == [typed["id"]]
    assert await ids(pool, DeadLetterQuery(topic=topic, reason="rejected")) == [rejected["id"]]
    assert await ids(pool, DeadLetterQuery(topic=topic, group="billing")) == [grouped["id"]]
    q = DeadLetterQuery(topic=topic, error_contains="connection refused")
    assert await ids(pool, q) == [erred["id"]], "case-insensitive"
    q = DeadLetterQuery(topic=topic, until=NOW - timedelta(days=1))
    assert await ids(pool, q) == [old["id"]]
    q = DeadLetterQuery(topic=topic, since=NOW - timedelta(days=1))
    assert old["id"] not in await ids(pool, q)
    assert await ids(pool, DeadLetterQuery(topic=topic, state="resolved")) == [resolved["id"]]
    q = DeadLetterQuery(topic=topic, group="billing", reason="rejected")
    assert await ids(pool, q) == [], "filters combine with AND"
    assert await ids(pool, DeadLetterQuery(topic=f"{topic}-none")) == []


async def test_paging_walks_every_row_exactly_once(pool: asyncpg.Pool, topic: str) -> None:
    inserted = [(await add(pool, topic))["id"] for _ in range(23)]
    query = DeadLetterQuery(topic=topic)
    seen: list[int] = []
    token: str | None = None
    pages = 0
    while True:
        page, token = await catalog.list_dead_letters(
            pool, PREFIX, query, page_size=5, page_token=token, token_key=KEY
        )
        pages += 1
        seen += [r.id for r in page]
        if token is None:
            break
        # A row added while paging is newer than every page, so it never shows up twice.
        await add(pool, topic)
    assert pages == 5
    assert seen == sorted(inserted, reverse=True)


async def test_page_size_bounds(pool: asyncpg.Pool, topic: str) -> None:
    await pool.executemany(
        "INSERT INTO conveyor.dead_letters (topic, dlq_stream, dlq_entry_id, source_stream, "
        "source_entry_id, consumer_group, reason) VALUES ($1, $2, $3, 's', '1-0', 'g', 'rejected')",
        [(topic, f"test:{{{topic}}}:dlq", f"1-{i}") for i in range(60)],
    )
    query = DeadLetterQuery(topic=topic)
    for bad in (-1, 1001):
        with pytest.raises(InvalidInput) as err:
            await catalog.list_dead_letters(
                pool, PREFIX, query, page_size=bad, page_token=None, token_key=KEY
            )
        assert err.value.field == "page_size"
    page, token = await catalog.list_dead_letters(
        pool, PREFIX, query, page_size=0, page_token=None, token_key=KEY
    )
    assert len(page) == 50 and token is not None
    page, token = await catalog.list_dead_letters(
        pool, PREFIX, query, page_size=0, page_token=token, token_key=KEY
    )
    assert len(page) == 10 and token is None


async def test_bad_page_tokens_are_invalid_input(pool: asyncpg.Pool, topic: str) -> None:
    for _ in range(3):
        await add(pool, topic)
    query = DeadLetterQuery(topic=topic)
    _, token = await catalog.list_dead_letters(
        pool, PREFIX, query, page_size=1, page_token=None, token_key=KEY
    )
    assert token is not None
    body, mac = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged_body = (
        base64.urlsafe_b64encode(json.dumps(payload | {"after": 10**12}).encode())
        .rstrip(b"=")
        .decode()
    )
    other_key = encode_page_token(b"x" * 32, query, PREFIX, payload["after"])
    other_query = encode_page_token(KEY, DeadLetterQuery(topic=topic, state="open"), PREFIX, 99)
    bad_tokens = [
        "garbage",
        "%%%.***",
        token[:-3],
        token[: len(token) // 2],
        f"{forged_body}.{mac}",
        other_key,
        other_query,
        token + "A",
        "A" * 10_000,
        "\x00." + mac,
    ]
    for bad in bad_tokens:
        with pytest.raises(InvalidInput) as err:
            await catalog.list_dead_letters(
                pool, PREFIX, query, page_size=1, page_token=bad, token_key=KEY
            )
        assert err.value.field == "page_token", bad
    page, _ = await catalog.list_dead_letters(
        pool, PREFIX, query, page_size=1, page_token=token, token_key=KEY
    )
    assert len(page) == 1, "the genuine token still works"


async def test_filter_text_is_literal(pool: asyncpg.Pool, topic: str) -> None:
    messages = {
        "sql": "input ' OR 1=1 -- was refused",
        "percent": "disk 100% full",
        "underscore": "no such key a_b",
        "backslash": "path C:\\temp missing",
        "plain": "axb and 100 percent, C:temp",
    }
    rows = {k: (await add(pool, topic, error_message=m))["id"] for k, m in messages.items()}
    await add(pool, topic, error_message=None)
    for text, expected in [
        ("' OR 1=1 --", ["sql"]),
        ("%", ["percent"]),
        ("_", ["underscore"]),
        ("a_b", ["underscore"]),
        ("\\", ["backslash"]),
        ("C:\\temp", ["backslash"]),
        ("100%", ["percent"]),
        ("'", ["sql"]),
    ]:
        found = await ids(pool, DeadLetterQuery(topic=topic, error_contains=text))
        assert found == [rows[k] for k in expected], text
    assert len(await ids(pool, DeadLetterQuery(topic=topic, error_contains=""))) == 6


def test_query_is_checked_on_construction() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"since": NOW, "until": NOW - timedelta(seconds=1)}, "since"),
        ({"since": datetime(2030, 1, 1)}, "since"),  # no time zone
        ({"reason": "bogus"}, "reason"),
        ({"state": "closed"}, "state"),
        ({"topic": "Bad Topic"}, "topic"),
        ({"topic": "{x}"}, "topic"),
        ({"group": "g*"}, "group"),
        ({"group": "a b"}, "group"),
        ({"group": ""}, "group"),
        ({"event_type": "x" * 513}, "event_type"),
        ({"error_contains": "a\x00b"}, "error_contains"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidInput) as err:
            DeadLetterQuery(**kwargs)
        assert err.value.field == field, kwargs
    DeadLetterQuery(since=NOW, until=NOW)  # empty, but not inverted


def test_parse_entry_id() -> None:
    assert parse_entry_id("1700000000000-0") == "1700000000000-0"
    assert parse_entry_id("0-0") == "0-0"
    assert parse_entry_id("007-01") == "7-1"
    top = f"{2**64 - 1}-{2**64 - 1}"
    assert parse_entry_id(top) == top
    for bad in [
        "abc",
        "1-",
        "-1-0",
        "1" * 10_000,
        "1-2-3",
        " 1-0",
        "1-0\n",
        "1 -0",
        "",
        "1",
        "+1-0",
        f"{2**64}-0",
        "0-" + "0" * 21,
        "\u0661-\u0660",  # Arabic-Indic digits
        "*",
        "$",
    ]:
        with pytest.raises(InvalidInput) as err:
            parse_entry_id(bad)
        assert err.value.field == "entry_id"
        assert len(err.value.message) < 200, "a long value is not echoed in full"


# --- single rows, resolve, state -----------------------------------------------------------


async def test_get_dead_letter_and_dead_letters(pool: asyncpg.Pool, topic: str) -> None:
    a = await add(pool, topic, error_message="first")
    b = await add(pool, topic)
    record = await catalog.get_dead_letter(pool, PREFIX, topic, a["dlq_entry_id"])
    assert record is not None
    assert (record.id, record.entry_id, record.error_message) == (
        a["id"],
        a["dlq_entry_id"],
        "first",
    )
    assert record.event_id == str(a["event_id"]) and record.state == "open"
    assert await catalog.get_dead_letter(pool, PREFIX, topic, "1-999999") is None
    assert await catalog.get_dead_letter(pool, PREFIX, f"{topic}-x", a["dlq_entry_id"]) is None
    many = await catalog.get_dead_letters(
        pool, PREFIX, topic, [b["dlq_entry_id"], "1-1", a["dlq_entry_id"]]
    )
    assert [r.id for r in many] == [a["id"], b["id"]]
    with pytest.raises(InvalidInput) as err:
        await catalog.get_dead_letter(pool, PREFIX, topic, "1-")
    assert err.value.field == "entry_id"


async def test_resolve_changes_only_unresolved_rows(pool: asyncpg.Pool, topic: str) -> None:
    open_ = await add(pool, topic)
    reprocessed = await add(pool, topic, state="reprocessed")
    done = await add(pool, topic, state="resolved", resolution="known issue", resolved_by="alice")
    rows = (open_, reprocessed, done)
    entries = [r["dlq_entry_id"] for r in rows]
    records = await catalog.get_dead_letters(pool, PREFIX, topic, entries)
    for reason in ("", "   \n"):
        with pytest.raises(InvalidInput) as err:
            async with pool.acquire() as conn:
                await catalog.resolve(conn, [r["id"] for r in rows], reason=reason, principal=topic)
        assert err.value.field == "reason"
    changed = await Catalog(pool, PREFIX).resolve(records, reason="fixed", principal=topic)
    assert changed == sorted([open_["id"], reprocessed["id"]])
    after = {r.id: r for r in await catalog.get_dead_letters(pool, PREFIX, topic, entries)}
    assert {r.state for r in after.values()} == {"resolved"}
    assert (after[open_["id"]].resolution, after[open_["id"]].resolved_by) == ("fixed", topic)
    assert after[open_["id"]].updated_at > datetime.now(UTC) - timedelta(minutes=1)
    assert (after[done["id"]].resolution, after[done["id"]].resolved_by) == ("known issue", "alice")
    async with pool.acquire() as conn:
        ids_ = [r["id"] for r in rows]
        assert await catalog.resolve(conn, ids_, reason="again", principal=topic) == []
    (audit,) = await audit_entries(pool, PREFIX, [open_["dlq_entry_id"], "nobody"])
    assert (audit.principal, audit.action, audit.reason, audit.outcome) == (
        topic,
        "resolve",
        "fixed",
        "resolved 2",
    )
    assert sorted(audit.target_ids) == sorted(entries)
    assert await audit_entries(pool, PREFIX, [f"{topic}-none"]) == []


async def test_set_state_is_compare_and_set(pool: asyncpg.Pool, topic: str) -> None:
    a, b = await add(pool, topic), await add(pool, topic)
    done = await add(pool, topic, state="resolved")
    all_ids = [a["id"], b["id"], done["id"]]
    async with pool.acquire() as conn:
        moved = await catalog.set_state(conn, all_ids, "reprocessing", expect=["open"])
        assert moved == [a["id"], b["id"]]
        assert await catalog.set_state(conn, all_ids, "reprocessing", expect=["open"]) == []
        moved = await catalog.set_state(conn, [a["id"]], "reprocessed", expect=["reprocessing"])
        assert moved == [a["id"]]
        assert await catalog.set_state(conn, [], "open", expect=["open"]) == []
        for state, expect, field in [("gone", ["open"], "state"), ("open", ["x"], "expect")]:
            with pytest.raises(InvalidInput) as err:
                await catalog.set_state(conn, all_ids, state, expect=expect)
            assert err.value.field == field
    states = {r.id: r.state for r in await records(pool, topic)}
    assert states == {a["id"]: "reprocessed", b["id"]: "reprocessing", done["id"]: "resolved"}


async def records(pool: asyncpg.Pool, topic: str) -> list[DeadLetterRecord]:
    records, _ = await catalog.list_dead_letters(
        pool, PREFIX, DeadLetterQuery(topic=topic), page_size=1000, page_token=None, token_key=KEY
    )
    return records


async def test_deployments_sharing_the_catalog_see_only_their_own_dead_letters(
    pool: asyncpg.Pool, topic: str
) -> None:
    """Two key prefixes (say staging and prod) on one database: the same topic and even the same
    dead-letter entry id in both. Each deployment's ops plane passes its prefix; nothing of the
    other one is listed, shown, resolved, reported or traced."""
    entry, event = new_entry_id(), uuid.uuid4()
    mine, theirs = [
        await add(
            pool,
            topic,
            dlq_stream=wire.Keys(topic, prefix).dlq,
            dlq_entry_id=entry,
            event_id=event,
            error_message=prefix,
        )
        for prefix in ("prod", "prod:eu")  # one prefix may start another one
    ]
    prod, eu, staging = (Catalog(pool, p) for p in ("prod", "prod:eu", "staging"))
    got = await prod.dead_letter(topic, entry)
    assert got is not None and got.id == mine["id"]
    got = await eu.dead_letter(topic, entry)
    assert got is not None and got.id == theirs["id"]
    assert await staging.dead_letter(topic, entry) is None
    assert [r.id for r in await prod.dead_letters(topic, [entry])] == [mine["id"]]
    page, _ = await prod.list_dead_letters(
        DeadLetterQuery(topic=topic), page_size=10, page_token=None, token_key=KEY
    )
    assert [r.id for r in page] == [mine["id"]]
    page, _ = await eu.list_dead_letters(
        DeadLetterQuery(error_contains="prod"), page_size=10, page_token=None, token_key=KEY
    )
    assert [r.id for r in page] == [theirs["id"]]
    (record,) = await prod.dead_letters(topic, [entry])
    assert await prod.resolve([record], reason="ok", principal=topic) == [mine["id"]]
    both = [*await prod.dead_letters(topic, [entry]), *await eu.dead_letters(topic, [entry])]
    states = {r.id: r.state for r in both}
    assert states == {mine["id"]: "resolved", theirs["id"]: "open"}
    assert (await reports.dead_letter_report(pool, "prod", topic, 5, now=NOW)).total == 1
    assert [r.id for r in await eu.dead_letters_for_event(event)] == [theirs["id"]]
    assert [a.action for a in await prod.audit_entries([entry])] == ["resolve"]
    assert await eu.audit_entries([entry]) == []
    with pytest.raises(ValueError, match="invalid key prefix"):
        Catalog(pool, "{bad}")
