"""The application schemas' side of verifying: the outbox window read in pages, and the groups'
ledger rows. Read-only, short statements: no transaction spans two of them and nothing is locked
beyond what a plain SELECT takes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from admin.verify.verdicts import Event
from conveyor import database

PAGE_SIZE: Final = 5000
"""Outbox rows read per statement."""

STATEMENT_TIMEOUT: Final = "30s"
"""No statement of `conveyor verify` runs longer; each reads one page."""

SESSION: Final = {
    "statement_timeout": STATEMENT_TIMEOUT,
    "default_transaction_read_only": "on",
    "idle_in_transaction_session_timeout": "60s",
}
"""Settings of every connection `conveyor verify` opens: it cannot write, and no statement of it
can hold the outbox for long. Each is named `conveyor verify` unless the user named it."""


async def connect(database_url: str) -> asyncpg.Pool:
    """A small read-only pool for verifying (see SESSION)."""
    return await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=2,
        server_settings={**SESSION, **database.server_settings(database_url, "verify")},
    )


@dataclass(frozen=True, slots=True)
class Window:
    """The outbox rows to verify: published in [since, until], or unpublished and created since
    `since`; of one topic when `topic` is set."""

    schema: str
    since: datetime
    until: datetime
    topic: str | None = None


async def database_now(pool: asyncpg.Pool) -> datetime:
    """PostgreSQL's clock, which stamped `created_at` and `published_at`."""
    now: datetime = await pool.fetchval("SELECT now()")
    return now


async def has_table(pool: asyncpg.Pool, schema: str, table: str) -> bool:
    """Whether `schema.table` exists."""
    return bool(await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{table}"))


def _event(row: Any) -> Event:
    return Event(
        row["event_id"], row["topic"], row["created_at"], row["published_at"], row["aggregate_id"]
    )


async def published(
    pool: asyncpg.Pool, window: Window, page_size: int = PAGE_SIZE
) -> AsyncIterator[list[Event]]:
    """The window's published rows in pages, by (published_at, id): the outbox indexes
    `published_at`, so each page starts where the last ended, however many older rows the
    retention keeps before the window."""
    table = f"{database.validate_schema(window.schema)}.{database.OUTBOX_TABLE}"
    statement = (
        "SELECT id, event_id::text AS event_id, topic, aggregate_id, created_at, published_at "
        f"FROM {table} "
        "WHERE published_at >= $1 AND (published_at, id) > ($1, $2) AND published_at <= $3 "
        "AND ($4::text IS NULL OR topic = $4) ORDER BY published_at, id LIMIT $5"
    )
    after: tuple[datetime, int] = (window.since, 0)
    while True:
        rows = await pool.fetch(statement, *after, window.until, window.topic, page_size)
        if rows:
            yield [_event(r) for r in rows]
        if len(rows) < page_size:
            return
        after = (rows[-1]["published_at"], rows[-1]["id"])


async def unpublished(
    pool: asyncpg.Pool, window: Window, page_size: int = PAGE_SIZE
) -> AsyncIterator[list[Event]]:
    """The window's rows not published yet, in pages by id (the relay's own index)."""
    table = f"{database.validate_schema(window.schema)}.{database.OUTBOX_TABLE}"
    statement = (
        "SELECT id, event_id::text AS event_id, topic, aggregate_id, created_at, published_at "
        f"FROM {table} "
        "WHERE published_at IS NULL AND id > $1 AND created_at >= $2 "
        "AND ($3::text IS NULL OR topic = $3) ORDER BY id LIMIT $4"
    )
    after = 0
    while True:
        rows = await pool.fetch(statement, after, window.since, window.topic, page_size)
        if rows:
            yield [_event(r) for r in rows]
        if len(rows) < page_size:
            return
        after = rows[-1]["id"]


async def ledger_results(
    pool: asyncpg.Pool, schema: str, groups: Collection[str], event_ids: Sequence[str]
) -> dict[tuple[str, str], str]:
    """(group, event id) -> processing_result of the rows `schema`'s ledger holds for them."""
    if not groups or not event_ids:
        return {}
    table = f"{database.validate_schema(schema)}.{database.LEDGER_TABLE}"
    rows = await pool.fetch(
        f"SELECT consumer_group, event_id::text AS event_id, processing_result FROM {table} "
        "WHERE consumer_group = ANY($1::text[]) AND event_id = ANY($2::uuid[])",
        list(groups),
        [uuid.UUID(e) for e in event_ids],
    )
    return {(r["consumer_group"], r["event_id"]): r["processing_result"] for r in rows}


async def ledgers_of(pool: asyncpg.Pool, group: str) -> list[str]:
    """The schemas whose ledger holds a row of `group` (one indexed look per ledger)."""
    schemas = await pool.fetch(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1",
        database.LEDGER_TABLE,
    )
    found = []
    for (schema,) in schemas:
        try:
            database.validate_schema(schema)
        except ValueError:
            continue  # not a name Conveyor migrates
        try:
            if await pool.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {schema}.{database.LEDGER_TABLE} "
                "WHERE consumer_group = $1)",
                group,
            ):
                found.append(schema)
        except (asyncpg.UndefinedTableError, asyncpg.InsufficientPrivilegeError):
            continue  # dropped since it was listed, or not ours to read
    return found
