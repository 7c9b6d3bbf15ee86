"""catalog_0005 (the deployment as a column) while a rollout has old and new processes side by
side, and against audit rows written before the deployment was recorded."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from admin import migrations
from admin.catalog.audit import AuditLog, audit_entries

# How processes before catalog_0005 write an audit row: the deployment travels in
# detail.key_prefix, and rows written before that field existed carry none.
_PREVIOUS_INSERT = """
    INSERT INTO conveyor.audit (principal, action, target_ids, reason, outcome, detail)
    VALUES ($1, $2, $3::text[], $4, $5, $6::text::jsonb)
"""
# How they read a deployment's audit rows of some entry ids.
_PREVIOUS_SELECT = (
    "SELECT action FROM conveyor.audit WHERE target_ids && $1::text[] AND "
    "coalesce(detail->>'key_prefix', $2) = $2"
)


async def _details(conn: asyncpg.Connection) -> dict[str, dict[str, object]]:
    rows = await conn.fetch("SELECT action, detail::text AS d FROM conveyor.audit ORDER BY id")
    return {r["action"]: json.loads(r["d"]) for r in rows}


async def test_downgrade_leaves_every_audit_row_as_it_was(scratch_database_url: str) -> None:
    """Up to catalog_0005 and back down changes no audit row: one that named no deployment
    still names none (the previous version shows it to every deployment)."""
    url = scratch_database_url
    await asyncio.to_thread(migrations.upgrade_catalog, url, "catalog_0004")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(_PREVIOUS_INSERT, "ops", "legacy", ["5-0"], None, "ok", '{"a": 1}')
        await conn.execute(
            _PREVIOUS_INSERT, "ops", "tagged", ["6-0"], None, "ok", '{"key_prefix": "acme"}'
        )
        before = await _details(conn)
        await asyncio.to_thread(migrations.upgrade_catalog, url)
        assert await conn.fetch("SELECT key_prefix FROM conveyor.audit ORDER BY id") == [
            ("",),
            ("acme",),
        ]
        await asyncio.to_thread(migrations.downgrade_catalog, url, "catalog_0004")
        assert await _details(conn) == before
    finally:
        await conn.close()


async def test_previous_version_writes_audit_rows_of_its_deployment_after_the_upgrade(
    scratch_database_url: str,
) -> None:
    """The runbook migrates before the new processes start, so the previous version's relays and
    consumers run against catalog_0005 for a while: their audit rows (resolve, reprocess,
    denials) must still be written, and belong to their deployment."""
    url = scratch_database_url
    await asyncio.to_thread(migrations.upgrade_catalog, url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        await pool.execute(
            _PREVIOUS_INSERT,
            *("ops", "resolve", ["5-0"], "fixed", "resolved 1", '{"key_prefix": "acme"}'),
        )
        assert [e.action for e in await audit_entries(pool, "acme", ["5-0"])] == ["resolve"]
        assert await audit_entries(pool, "staging", ["5-0"]) == []
    finally:
        await pool.close()


async def test_audit_rows_naming_no_deployment_are_shown_to_every_deployment(
    scratch_database_url: str,
) -> None:
    """Rows written before the deployment was recorded belong to no one deployment: every
    deployment's view of the entry id shows them, after the upgrade as before it."""
    url = scratch_database_url
    await asyncio.to_thread(migrations.upgrade_catalog, url, "catalog_0004")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        await pool.execute(_PREVIOUS_INSERT, "ops", "resolve", ["5-0"], "fixed", "resolved 1", "{}")
        await asyncio.to_thread(migrations.upgrade_catalog, url)
        for prefix in ("conveyor", "acme"):
            assert [e.action for e in await audit_entries(pool, prefix, ["5-0"])] == ["resolve"]
    finally:
        await pool.close()


async def test_previous_version_reads_only_its_deployments_rows_written_by_this_one(
    scratch_database_url: str,
) -> None:
    """While the previous version runs beside this one, its GetDeadLetter reads audit rows by
    `detail.key_prefix`: the rows this version writes must carry it there, or every other
    deployment's old processes would show this one's actions."""
    url = scratch_database_url
    await asyncio.to_thread(migrations.upgrade_catalog, url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        await AuditLog(pool, "acme").record(
            principal="ops", action="resolve", target_ids=["5-0"], reason="r", outcome="resolved 1"
        )
        assert await pool.fetch(_PREVIOUS_SELECT, ["5-0"], "staging") == []
        assert [r["action"] for r in await pool.fetch(_PREVIOUS_SELECT, ["5-0"], "acme")] == [
            "resolve"
        ]
    finally:
        await pool.close()
