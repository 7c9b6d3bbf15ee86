"""The consumer registry: members register, heartbeat and leave; the ops plane reads groups,
their modes, topics and ledgers. (Relays' rows and the sweep's list: `processes.py`.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from admin.catalog import processes
from consumers.catalog import Member
from conveyor import database

_CONSUMERS = f"{database.CATALOG_SCHEMA}.{database.CONSUMERS_TABLE}"


async def group_ledgers(pool: asyncpg.Pool, prefix: str) -> dict[str, str | None]:
    """Each registered consumer group of the deployment with key prefix `prefix`, with its
    ledger schema (None for at-least-once groups).

    A group whose members disagree (a mode change rolling out) counts as exactly-once, with the
    ledger of its most recently seen exactly-once member. Groups with no running consumer are
    absent (consumers unregister on a clean stop).
    """
    rows = await pool.fetch(
        f"SELECT DISTINCT ON (consumer_group) consumer_group, ledger_schema FROM {_CONSUMERS} "
        "WHERE key_prefix = $1 "
        "ORDER BY consumer_group, ledger_schema IS NULL, heartbeat_at DESC",
        prefix,
    )
    return {r["consumer_group"]: r["ledger_schema"] for r in rows}


async def registry_schemas(pool: asyncpg.Pool, prefix: str, own: Sequence[str]) -> list[str]:
    """Schemas to look in for an event: `own` plus the ledger schema of every registered
    consumer of the deployment with key prefix `prefix`."""
    rows = await pool.fetch(
        f"SELECT DISTINCT ledger_schema FROM {_CONSUMERS} "
        "WHERE ledger_schema IS NOT NULL AND key_prefix = $1",
        prefix,
    )
    return sorted({*own, *(r[0] for r in rows)})


@dataclass(frozen=True, slots=True)
class RegisteredGroup:
    """A consumer group with a member registered on a topic."""

    topic: str
    group: str
    mode: str
    members: int


async def registered_groups(pool: asyncpg.Pool, prefix: str) -> list[RegisteredGroup]:
    """Every (topic, group) of the deployment with a registered member, by topic and group."""
    rows = await pool.fetch(
        "SELECT consumer_group, unnest(topics) AS topic, min(mode) AS mode, count(*) AS n "
        f"FROM {_CONSUMERS} WHERE key_prefix = $1 "
        "GROUP BY consumer_group, topic ORDER BY topic, consumer_group",
        prefix,
    )
    return [RegisteredGroup(r["topic"], r["consumer_group"], r["mode"], r["n"]) for r in rows]


async def member_hosts(pool: asyncpg.Pool, prefix: str) -> dict[tuple[str, str], str]:
    """(group, member name) -> the host it registered from, for every registered member of the
    deployment with key prefix `prefix`."""
    rows = await pool.fetch(
        f"SELECT consumer_group, consumer_name, host FROM {_CONSUMERS} WHERE key_prefix = $1",
        prefix,
    )
    return {(r["consumer_group"], r["consumer_name"]): r["host"] for r in rows}


async def register(pool: asyncpg.Pool, member: Member) -> None:
    """Insert or refresh the member's row, and remove the rows of the group's members absent
    past `processes.PRUNE_AFTER`."""
    async with pool.acquire() as conn, conn.transaction():
        await processes.prune_members(conn, member.key_prefix, member.group, member.name)
        await _upsert(conn, member)


async def _upsert(conn: asyncpg.Connection, member: Member) -> None:
    await conn.execute(
        f"INSERT INTO {_CONSUMERS} (consumer_group, consumer_name, topics, mode, ledger_schema, "
        "host, pid, grpc_addr, key_prefix) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (key_prefix, consumer_group, consumer_name) "
        "DO UPDATE SET topics = EXCLUDED.topics, "
        "mode = EXCLUDED.mode, ledger_schema = EXCLUDED.ledger_schema, host = EXCLUDED.host, "
        "pid = EXCLUDED.pid, grpc_addr = EXCLUDED.grpc_addr, started_at = now(), "
        "heartbeat_at = now()",
        member.group,
        member.name,
        list(member.topics),
        member.mode,
        member.ledger_schema,
        member.host,
        member.pid,
        member.grpc_addr,
        member.key_prefix,
    )


async def heartbeat(pool: asyncpg.Pool, member: Member) -> None:
    """Refresh the member's heartbeat."""
    await pool.execute(
        f"UPDATE {_CONSUMERS} SET heartbeat_at = now() "
        "WHERE consumer_group = $1 AND consumer_name = $2 AND key_prefix = $3",
        member.group,
        member.name,
        member.key_prefix,
    )


async def unregister(pool: asyncpg.Pool, member: Member) -> None:
    """Remove the member's row."""
    await pool.execute(
        f"DELETE FROM {_CONSUMERS} WHERE consumer_group = $1 AND consumer_name = $2 "
        "AND key_prefix = $3",
        member.group,
        member.name,
        member.key_prefix,
    )
