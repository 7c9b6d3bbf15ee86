"""Dead-letter catalog rows for tests, inserted straight into `conveyor.dead_letters`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

NOW = datetime(2030, 1, 1, 10, 30, tzinfo=UTC)

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
