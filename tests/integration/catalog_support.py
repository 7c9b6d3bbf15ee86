"""Dead-letter catalog rows for tests, inserted straight into `conveyor.dead_letters`, and the
fixtures of the catalog test modules (a migrated catalog, a pool, a topic of one test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from admin import migrations

NOW = datetime(2030, 1, 1, 10, 30, tzinfo=UTC)
PREFIX = "test"
"""The key prefix of the rows `add` writes (their streams are `test:{topic}:...`)."""

# Entry ids unique to this run, so audit rows of other runs never name them.
_MS = 1_700_000_000_000 + uuid.uuid4().int % 10**11
_SEQ = iter(range(1, 10**9))


def new_entry_id() -> str:
    """A dead-letter entry id no other test run uses."""
    return f"{_MS}-{next(_SEQ)}"


async def add(pool: asyncpg.Pool, topic: str, **values: Any) -> dict[str, Any]:
    """Insert one dead letter of `topic` (defaults below, overridden by `values`); return it."""
    row: dict[str, Any] = {
        "topic": topic,
        "dlq_stream": f"test:{{{topic}}}:dlq",
        "dlq_entry_id": new_entry_id(),
        "source_stream": f"test:{{{topic}}}:events",
        "source_entry_id": "1699999999999-0",
        "consumer_group": "g",
        "consumer_name": "c1",
        "event_id": uuid.uuid4(),
        "event_type": "conveyor.test.v1.Thing",
        "reason": "max_attempts",
        "error_class": "RuntimeError",
        "error_message": "boom",
        "attempts": 3,
        "created_at": NOW,
        "state": "open",
    } | values
    columns = ", ".join(row)
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    row["id"] = await pool.fetchval(
        f"INSERT INTO conveyor.dead_letters ({columns}) VALUES ({params}) RETURNING id",
        *row.values(),
    )
    return row


@pytest.fixture(name="catalog_url", scope="module")
def fixture_catalog_url(services: tuple[str, str]) -> str:
    """The database URL with the catalog migrated (once per module; it is shared anyway)."""
    migrations.upgrade_catalog(services[0])
    return services[0]


@pytest.fixture(name="pool")
async def fixture_pool(catalog_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(catalog_url, min_size=1, max_size=4) as p:
        yield p


@pytest.fixture(name="topic")
async def fixture_topic(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A topic of this test alone; its dead letters and audit rows are deleted afterwards."""
    name = f"cat-{uuid.uuid4().hex[:12]}"
    yield name
    await pool.execute("DELETE FROM conveyor.dead_letters WHERE topic = $1", name)
    await pool.execute("DELETE FROM conveyor.audit WHERE principal = $1", name)
