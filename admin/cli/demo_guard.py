"""What the demo checks before it touches a schema: that the schema is the demo's own.

The demo's relay publishes every unpublished row of its schema's outbox under the demo's key
prefix, where no consumer of an application reads, and marks them published. Pointed at an
application's schema (`--schema signup`, or CONVEYOR_DEMO_SCHEMA left exported), it would take
that application's events for good; so it refuses a schema holding tables the demo does not make,
outbox rows of another topic, or ledger rows of another group, before migrating anything.
"""

from __future__ import annotations

from typing import Final, NoReturn

import asyncpg

from admin.errors import AdminError
from conveyor import database

DEMO_TABLES: Final = frozenset(
    {
        database.OUTBOX_TABLE,
        database.LEDGER_TABLE,
        database.COMMIT_GUARD_TABLE,
        database.RELAY_LISTENERS_TABLE,
        database.VERSION_TABLE,
        "demo_mail",
        "demo_outage",
    }
)
"""Every table the demo makes in its schema (test_demo_isolation fails when a migration adds one
that is missing here)."""
SHOWN: Final = 5
"""Tables, topics or groups a refusal names."""


class NotTheDemosSchema(AdminError):
    """The demo's --schema holds an application's data: the demo would take its events."""


async def check_schema(conn: asyncpg.Connection, schema: str, topic: str, group: str) -> None:
    """Raise NotTheDemosSchema unless `schema` is missing, or holds only the demo's tables, with
    outbox rows of `topic` only and ledger rows of `group` only."""
    tables = {
        r[0]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            schema,
        )
    }
    foreign = sorted(tables - DEMO_TABLES)
    if foreign:
        _refuse(schema, f"tables the demo does not make ({_names(foreign)})")
    if database.OUTBOX_TABLE in tables:
        topics = await conn.fetch(
            f"SELECT DISTINCT topic FROM {schema}.{database.OUTBOX_TABLE} WHERE topic <> $1 "
            f"LIMIT {SHOWN + 1}",
            topic,
        )
        if topics:
            found = _names([r[0] for r in topics])
            _refuse(schema, f"outbox events of topics other than {topic} ({found})")
    if database.LEDGER_TABLE in tables:
        groups = await conn.fetch(
            f"SELECT DISTINCT consumer_group FROM {schema}.{database.LEDGER_TABLE} "
            f"WHERE consumer_group <> $1 LIMIT {SHOWN + 1}",
            group,
        )
        if groups:
            found = _names([r[0] for r in groups])
            _refuse(schema, f"ledger rows of groups other than {group} ({found})")


async def discard_unpublished(conn: asyncpg.Connection, schema: str, topic: str) -> int:
    """Delete earlier runs' events of `topic` still unpublished (a run stopped early); how many.

    Each run counts only its own events, but its relay would otherwise publish them too."""
    if await conn.fetchval("SELECT to_regclass($1) IS NULL", f"{schema}.{database.OUTBOX_TABLE}"):
        return 0
    done = await conn.execute(
        f"DELETE FROM {schema}.{database.OUTBOX_TABLE} WHERE published_at IS NULL AND topic = $1",
        topic,
    )
    return int(done.rsplit(" ", 1)[-1])


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + ", ..." if len(names) > SHOWN else shown


def _refuse(schema: str, what: str) -> NoReturn:
    raise NotTheDemosSchema(
        f"--schema {schema} holds {what}: it is an application's schema, whose events the "
        "demo's relay would take. Run the demo in a schema of its own (default conveyor_demo; "
        "--schema or CONVEYOR_DEMO_SCHEMA)"
    )
