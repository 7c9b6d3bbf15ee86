"""Dead-letter rows of one deployment: list, look up, resolve, move between states.

Every function takes the deployment's key prefix and reads or changes only its rows
(`conveyor.dead_letters.key_prefix`, derived from the dead-letter stream's key).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from admin.catalog.pages import checked_page_size, decode_page_token, encode_page_token
from admin.catalog.records import (
    MAX_TEXT,
    DeadLetterQuery,
    DeadLetterRecord,
    check_one_of,
    check_text,
    checked_topic,
    entry_ids,
    parse_entry_id,
)
from admin.errors import InvalidInput
from conveyor import database

_DEAD_LETTERS: Final = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"
_COLUMNS: Final = (
    "id, topic, dlq_stream, dlq_entry_id, source_stream, source_entry_id, consumer_group, "
    "consumer_name, event_id, event_type, reason, error_class, error_message, attempts, "
    "first_failed_at, last_failed_at, created_at, state, resolution, resolved_by, updated_at, "
    "retry_of, retried_as"
)
_UNRESOLVED: Final = ("open", "reprocessing", "reprocessed")


def _like_literal(text: str | None) -> str | None:
    """An ILIKE pattern (ESCAPE '\\') matching `text` anywhere, its metacharacters literal; None
    for no text, which matches every row (also those without an error message)."""
    if not text:
        return None
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _record(row: Any) -> DeadLetterRecord:
    event_id = row["event_id"]
    return DeadLetterRecord(
        id=row["id"],
        topic=row["topic"],
        entry_id=row["dlq_entry_id"],
        source_stream=row["source_stream"],
        source_entry_id=row["source_entry_id"],
        group=row["consumer_group"],
        consumer=row["consumer_name"],
        event_id=None if event_id is None else str(event_id),
        event_type=row["event_type"],
        reason=row["reason"],
        error_class=row["error_class"],
        error_message=row["error_message"],
        attempts=row["attempts"],
        first_failed_at=row["first_failed_at"],
        last_failed_at=row["last_failed_at"],
        created_at=row["created_at"],
        state=row["state"],
        resolution=row["resolution"],
        resolved_by=row["resolved_by"],
        updated_at=row["updated_at"],
        dlq_stream=row["dlq_stream"],
        retry_of=row["retry_of"],
        retried_as=row["retried_as"],
    )


def _where(prefix: str, query: DeadLetterQuery, after_id: int | None) -> tuple[str, list[Any]]:
    """The WHERE clause and its parameters; the SQL text is built from constants only."""
    conditions: list[tuple[str, Any]] = [
        ("key_prefix = ${}", prefix),
        ("topic = ${}", query.topic),
        ("event_type = ${}", query.event_type),
        ("reason = ${}", query.reason),
        ("consumer_group = ${}", query.group),
        ("state = ${}", query.state),
        ("created_at >= ${}", query.since),
        ("created_at < ${}", query.until),
        # E'' keeps the escape a single backslash whatever standard_conforming_strings says.
        ("error_message ILIKE ${} ESCAPE E'\\\\'", _like_literal(query.error_contains)),
        ("id < ${}", after_id),
    ]
    clauses: list[str] = []
    args: list[Any] = []
    for sql, value in conditions:
        if value is None:
            continue
        args.append(value)
        clauses.append(sql.format(len(args)))
    return " WHERE " + " AND ".join(clauses), args


async def list_dead_letters(
    pool: asyncpg.Pool,
    prefix: str,
    query: DeadLetterQuery,
    *,
    page_size: int,
    page_token: str | None,
    token_key: bytes,
) -> tuple[list[DeadLetterRecord], str | None]:
    """One page of the deployment's dead letters matching `query`, newest first, and the token
    of the next page (None on the last one). `token_key` signs the tokens; every server of a
    deployment that continues another's pages needs the same key."""
    if len(token_key) < 16:
        raise ValueError("token_key must be at least 16 bytes")
    size = checked_page_size(page_size)
    after = decode_page_token(token_key, query, prefix, page_token) if page_token else None
    where, args = _where(prefix, query, after)
    # Keyset on id (the primary key): stable under concurrent inserts, and one row more than the
    # page tells whether a next page exists without counting.
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM {_DEAD_LETTERS}{where} ORDER BY id DESC LIMIT {size + 1}", *args
    )
    records = [_record(r) for r in rows[:size]]
    more = len(rows) > size
    return records, encode_page_token(token_key, query, prefix, records[-1].id) if more else None


async def get_dead_letters(
    pool: asyncpg.Pool, prefix: str, topic: str, ids: Sequence[str]
) -> list[DeadLetterRecord]:
    """The dead letters of the topic with these entry ids, oldest first; unknown ids are
    absent."""
    entries = entry_ids(ids)
    checked_topic(topic)
    if not entries:
        return []
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM {_DEAD_LETTERS} WHERE key_prefix = $1 AND topic = $2 "
        "AND dlq_entry_id = ANY($3) ORDER BY id",
        prefix,
        topic,
        entries,
    )
    return [_record(r) for r in rows]


async def get_dead_letter(
    pool: asyncpg.Pool, prefix: str, topic: str, entry_id: str
) -> DeadLetterRecord | None:
    """The dead letter at `entry_id` of the topic's dead-letter stream, or None."""
    found = await get_dead_letters(pool, prefix, topic, [parse_entry_id(entry_id)])
    return found[0] if found else None


async def recorded(
    pool: asyncpg.Pool | asyncpg.Connection, dlq_stream: str, entry_ids: Sequence[str]
) -> set[str]:
    """Those of `entry_ids` recorded in the catalog for dead-letter stream `dlq_stream`."""
    rows = await pool.fetch(
        f"SELECT dlq_entry_id FROM {_DEAD_LETTERS} WHERE dlq_stream = $1 "
        "AND dlq_entry_id = ANY($2::text[])",
        dlq_stream,
        list(entry_ids),
    )
    return {r["dlq_entry_id"] for r in rows}


async def dead_letters_for_event(
    pool: asyncpg.Pool, prefix: str, event_id: uuid.UUID
) -> list[DeadLetterRecord]:
    """Every dead letter of the event, in any topic or group, oldest first."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM {_DEAD_LETTERS} WHERE key_prefix = $1 AND event_id = $2 "
        "ORDER BY id",
        prefix,
        event_id,
    )
    return [_record(r) for r in rows]


async def dead_letters_of_events(
    pool: asyncpg.Pool, prefix: str, event_ids: Sequence[uuid.UUID]
) -> list[DeadLetterRecord]:
    """The dead letters of any of these events, oldest first."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM {_DEAD_LETTERS} WHERE key_prefix = $1 "
        "AND event_id = ANY($2::uuid[]) ORDER BY id",
        prefix,
        list(event_ids),
    )
    return [_record(r) for r in rows]


async def resolve(
    conn: asyncpg.Connection,
    ids: Sequence[int],
    *,
    reason: str,
    principal: str,
    expect: Sequence[str] = _UNRESOLVED,
) -> list[int]:
    """Mark the dead letters with these catalog ids resolved where they are in one of the
    `expect` states (by default: not resolved yet, so a resolution is never overwritten);
    return the ids that changed, ascending. Runs on `conn`, so the caller writes the audit row
    in the same transaction."""
    if not reason.strip():
        raise InvalidInput("a resolution needs a reason", field="reason", value=reason)
    check_text("reason", reason, limit=MAX_TEXT)
    check_text("principal", principal, limit=256)
    _check_states(expect)
    if not ids:
        return []
    rows = await conn.fetch(
        f"UPDATE {_DEAD_LETTERS} SET state = 'resolved', resolution = $2, resolved_by = $3, "
        "updated_at = now() WHERE id = ANY($1::bigint[]) AND state = ANY($4::text[]) "
        "RETURNING id",
        list(ids),
        reason,
        principal,
        list(expect),
    )
    return sorted(r["id"] for r in rows)


async def set_state(
    conn: asyncpg.Connection, ids: Sequence[int], state: str, *, expect: Sequence[str]
) -> list[int]:
    """Move the dead letters with these catalog ids to `state` where they are in one of the
    `expect` states (compare-and-set); return the ids that moved, ascending."""
    check_one_of("state", state, database.DEAD_LETTER_STATES)
    _check_states(expect)
    if not ids:
        return []
    rows = await conn.fetch(
        f"UPDATE {_DEAD_LETTERS} SET state = $2, updated_at = now() "
        "WHERE id = ANY($1::bigint[]) AND state = ANY($3::text[]) RETURNING id",
        list(ids),
        state,
        list(expect),
    )
    return sorted(r["id"] for r in rows)


def _check_states(states: Sequence[str]) -> None:
    if not states:
        raise InvalidInput("expect names no state", field="expect", value="")
    for value in states:
        check_one_of("expect", value, database.DEAD_LETTER_STATES)
