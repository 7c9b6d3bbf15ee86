"""Migrations against the real PostgreSQL: tables, indexes, trigger, side-by-side schemas, CLI."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from typer.testing import CliRunner

from admin import migrations
from admin.cli.migrate import app
from admin.errors import SchemaNotReady
from conveyor.database import (
    CONSUMER_MODES,
    DEAD_LETTER_STATES,
    LEDGER_RESULTS,
    notify_channel,
)
from conveyor.wire import REASONS

APP_HEAD = "app_0005"
APP_TABLES = {
    "outbox",
    "event_ledger",
    "conveyor_commit_guard",
    "conveyor_relay_listeners",
    "conveyor_alembic_version",
}
CATALOG_HEAD = "catalog_0007"
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres"


async def _tables(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    return {r["table_name"] for r in rows}


async def _indexes(conn: asyncpg.Connection, schema: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", schema
    )
    return {r["indexname"]: r["indexdef"] for r in rows}


async def _schema_exists(conn: asyncpg.Connection, schema: str) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema
    )
    return found


async def _insert_outbox(conn: asyncpg.Connection, schema: str, rows: int = 1) -> None:
    await conn.executemany(
        f"INSERT INTO {schema}.outbox (event_id, topic, event_type, aggregate_type, "
        "aggregate_id, payload) SELECT e, 'identity', 'UserCreated', 'user', '42', '\\x00' "
        "FROM unnest($1::uuid[]) e",
        [([uuid.uuid4() for _ in range(rows)],)],
    )


async def test_upgrade_down_base_and_upgrade_again(
    pg: asyncpg.Connection, database_url: str, schema: str
) -> None:
    await asyncio.to_thread(migrations.upgrade, database_url, schema)

    assert await _tables(pg, schema) == APP_TABLES
    assert {"consumers", "dead_letters", "audit"} <= await _tables(pg, "conveyor")
    indexes = await _indexes(pg, schema)
    assert "WHERE (published_at IS NULL)" in indexes["ix_outbox_unpublished"]
    assert "(id)" in indexes["ix_outbox_unpublished"]
    assert "WHERE (published_at IS NOT NULL)" in indexes["ix_outbox_published_at"]
    assert "UNIQUE" in indexes["outbox_event_id_key"]
    assert "(event_type, processed_at)" in indexes["ix_event_ledger_type_processed"]
    assert "(consumer_group, processed_at)" in indexes["ix_event_ledger_group_processed"]
    trigger = await pg.fetchrow(
        "SELECT t.tgname, p.proname, n.nspname FROM pg_trigger t "
        "JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal",
        f"{schema}.outbox",
    )
    assert trigger is not None
    assert tuple(trigger) == ("conveyor_outbox_notify", "conveyor_outbox_notify", schema)
    assert await asyncio.to_thread(migrations.current, database_url, schema) == APP_HEAD

    await asyncio.to_thread(migrations.downgrade, database_url, schema, "base")

    # Conveyor created the schema and nothing else lives in it, so base removes it entirely.
    assert not await _schema_exists(pg, schema)
    assert await asyncio.to_thread(migrations.current, database_url, schema) is None
    assert await asyncio.to_thread(migrations.current_catalog, database_url) == CATALOG_HEAD

    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    assert await _tables(pg, schema) == APP_TABLES
    await _insert_outbox(pg, schema)


async def test_down_without_revision_goes_one_step(
    pg: asyncpg.Connection, database_url: str, schema: str
) -> None:
    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    await asyncio.to_thread(migrations.downgrade, database_url, schema, "app_0004")

    await asyncio.to_thread(migrations.downgrade, database_url, schema)

    assert await asyncio.to_thread(migrations.current, database_url, schema) == "app_0003"
    assert "conveyor_commit_guard" not in await _tables(pg, schema)
    state = await asyncio.to_thread(migrations.check, database_url, schema)
    assert state == migrations.SchemaState(schema, "app_0003", APP_HEAD, at_head=False)

    for _ in range(2):
        await asyncio.to_thread(migrations.downgrade, database_url, schema)
    assert await asyncio.to_thread(migrations.current, database_url, schema) == "app_0001"
    assert await _tables(pg, schema) == {"outbox", "conveyor_alembic_version"}


async def test_ledger_dead_letter_marks_become_failures_on_the_way_down(
    pg: asyncpg.Connection, database_url: str, schema: str
) -> None:
    """app_0003 adds the `dead_letter` result; going back to app_0002 keeps the rows as
    `failure` (not applied, which any delivery may apply over), and up again accepts it."""
    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    insert = (
        f"INSERT INTO {schema}.event_ledger (consumer_group, event_id, event_type, stream, "
        "entry_id, processing_result) VALUES ('g', $1, 'T', 's', '1-0', $2)"
    )
    await pg.execute(insert, uuid.uuid4(), "dead_letter")
    await pg.execute(insert, uuid.uuid4(), "success")
    await asyncio.to_thread(migrations.downgrade, database_url, schema, "app_0002")
    results = await pg.fetch(f"SELECT processing_result FROM {schema}.event_ledger ORDER BY 1")
    assert [r[0] for r in results] == ["failure", "success"]
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute(insert, uuid.uuid4(), "dead_letter")
    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    await pg.execute(insert, uuid.uuid4(), "dead_letter")


async def test_ledger_key_and_result_check(pg: asyncpg.Connection, migrated_schema: str) -> None:
    insert = (
        f"INSERT INTO {migrated_schema}.event_ledger (consumer_group, event_id, event_type, "
        "stream, entry_id) VALUES ($1, $2, 'UserCreated', 'conveyor:{identity}:events', '1-0') "
        "RETURNING processing_result"
    )
    event_id = uuid.uuid4()
    assert await pg.fetchval(insert, "billing", event_id) == "success"
    # The same event applies once per group: another group may record it, the same may not.
    await pg.execute(insert, "mailer", event_id)
    with pytest.raises(asyncpg.UniqueViolationError):
        await pg.execute(insert, "billing", event_id)

    set_result = f"UPDATE {migrated_schema}.event_ledger SET processing_result = $1"
    for result in LEDGER_RESULTS:
        await pg.execute(set_result, result)
    with pytest.raises(asyncpg.CheckViolationError, match="event_ledger_result_check"):
        await pg.execute(set_result, "done")


async def test_catalog_accepts_exactly_the_contract_values(
    pg: asyncpg.Connection, migrated_schema: str
) -> None:
    dead_letter = (
        "INSERT INTO conveyor.dead_letters (topic, dlq_stream, dlq_entry_id, source_stream, "
        "source_entry_id, consumer_group, reason, state) "
        "VALUES ('t', 's', $1, 's', '1-0', 'g', $2, $3)"
    )
    consumer = (
        "INSERT INTO conveyor.consumers (consumer_group, consumer_name, topics, mode) "
        "VALUES ($1, 'c', '{t}', $2)"
    )
    tx = pg.transaction()
    await tx.start()
    try:  # the catalog is shared with other tests: roll everything back
        for reason in REASONS:
            await pg.execute(dead_letter, uuid.uuid4().hex, reason, "open")
        for state in DEAD_LETTER_STATES:
            await pg.execute(dead_letter, uuid.uuid4().hex, "rejected", state)
        for mode in CONSUMER_MODES:
            await pg.execute(consumer, uuid.uuid4().hex, mode)
        for sql, args in (
            (dead_letter, ("x", "bogus", "open")),
            (dead_letter, ("x", "rejected", "bogus")),
            (consumer, ("x", "sometimes")),
        ):
            with pytest.raises(asyncpg.CheckViolationError):
                async with pg.transaction():
                    await pg.execute(sql, *args)
    finally:
        await tx.rollback()


async def test_outbox_insert_notifies_on_commit_only(
    pg: asyncpg.Connection, database_url: str, migrated_schema: str
) -> None:
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener(
            notify_channel(migrated_schema),
            lambda _conn, _pid, channel, payload: received.put_nowait((channel, payload)),
        )
        tx = pg.transaction()
        await tx.start()
        await _insert_outbox(pg, migrated_schema)
        await tx.rollback()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(received.get(), 0.2)

        async with pg.transaction():
            await _insert_outbox(pg, migrated_schema, rows=3)
        assert await asyncio.wait_for(received.get(), 5) == (
            notify_channel(migrated_schema),
            "",
        )
        await asyncio.sleep(0.1)
        assert received.empty(), "one statement wakes the relay once"
    finally:
        await listener.close()


async def test_two_schemas_side_by_side(
    pg: asyncpg.Connection, database_url: str, schema: str, other_schema: str
) -> None:
    # The application already owns `schema` and keeps its own Alembic history there.
    await pg.execute(f"CREATE SCHEMA {schema}")
    await pg.execute(f"CREATE TABLE {schema}.alembic_version (version_num varchar(32) PRIMARY KEY)")
    await pg.execute(f"INSERT INTO {schema}.alembic_version VALUES ('apps_own_rev')")

    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    await asyncio.to_thread(migrations.upgrade, database_url, other_schema)
    assert (
        await pg.fetchval(f"SELECT version_num FROM {schema}.conveyor_alembic_version") == APP_HEAD
    )
    assert await pg.fetchval(f"SELECT version_num FROM {schema}.alembic_version") == "apps_own_rev"

    await asyncio.to_thread(migrations.downgrade, database_url, schema, "base")

    assert await _tables(pg, schema) == {"alembic_version"}
    assert await pg.fetchval(f"SELECT version_num FROM {schema}.alembic_version") == "apps_own_rev"
    assert await _tables(pg, other_schema) == APP_TABLES
    assert await asyncio.to_thread(migrations.current, database_url, other_schema) == APP_HEAD
    assert await asyncio.to_thread(migrations.current_catalog, database_url) == CATALOG_HEAD
    await _insert_outbox(pg, other_schema)


async def test_ensure_at_head_names_the_command(database_url: str, schema: str) -> None:
    with pytest.raises(SchemaNotReady) as caught:
        await migrations.ensure_at_head(database_url, schema)
    assert caught.value.schema == schema
    assert caught.value.current is None
    assert caught.value.head == APP_HEAD
    assert f"run `conveyor migrate up --schema {schema}`" in str(caught.value)

    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    await migrations.ensure_at_head(database_url, schema)

    await asyncio.to_thread(migrations.downgrade, database_url, schema)
    with pytest.raises(SchemaNotReady, match="at revision 'app_0004', head is 'app_0005'"):
        await migrations.ensure_at_head(database_url, schema)


async def test_catalog_down_base_and_up(pg: asyncpg.Connection, scratch_database_url: str) -> None:
    await asyncio.to_thread(migrations.upgrade_catalog, scratch_database_url)
    assert await asyncio.to_thread(migrations.current_catalog, scratch_database_url) == CATALOG_HEAD

    await asyncio.to_thread(migrations.downgrade_catalog, scratch_database_url, "base")
    scratch = await asyncpg.connect(scratch_database_url)
    try:
        assert not await _schema_exists(scratch, "conveyor")
        await asyncio.to_thread(migrations.upgrade_catalog, scratch_database_url)
        assert await _tables(scratch, "conveyor") == {
            "consumers",
            "dead_letters",
            "audit",
            "reprocess_requests",
            "dead_letter_cursors",
            "relays",
            "topic_layouts",
            "partition_leases",
            "alembic_version",
        }
    finally:
        await scratch.close()


async def test_consumer_registry_keeps_deployments_apart_and_downgrades_to_one_row(
    scratch_database_url: str,
) -> None:
    """catalog_0003: two key prefixes may register the same group and member name; going back
    to catalog_0002 keeps the most recently seen of them, and every row survives the way up."""
    url = scratch_database_url
    await asyncio.to_thread(migrations.upgrade_catalog, url, "catalog_0002")
    scratch = await asyncpg.connect(url)
    insert = (
        "INSERT INTO conveyor.consumers (consumer_group, consumer_name, topics, mode"
        "{extra}) VALUES ('g', 'c', '{{t}}', 'exactly-once'{values})"
    )
    try:
        await scratch.execute(insert.format(extra="", values=""))
        await asyncio.to_thread(migrations.upgrade_catalog, url)
        rows = await scratch.fetch("SELECT key_prefix FROM conveyor.consumers")
        assert [r["key_prefix"] for r in rows] == ["conveyor"], "older rows get the default"
        await scratch.execute(
            insert.format(extra=", key_prefix, heartbeat_at", values=", 'staging', now() + '1s'")
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await scratch.execute(insert.format(extra=", key_prefix", values=", 'staging'"))
        await asyncio.to_thread(migrations.downgrade_catalog, url, "catalog_0002")
        rows = await scratch.fetch("SELECT * FROM conveyor.consumers")
        assert len(rows) == 1 and "key_prefix" not in rows[0]
        await asyncio.to_thread(migrations.upgrade_catalog, url)
        assert await scratch.fetchval("SELECT count(*) FROM conveyor.consumers") == 1
    finally:
        await scratch.close()


async def test_relay_registry_comes_with_catalog_0006_and_goes_with_its_downgrade(
    scratch_database_url: str,
) -> None:
    """catalog_0006: the relays table keeps deployments apart by key prefix; going back to
    catalog_0005 drops it and touches no consumer row; up again, it is empty and works."""
    url = scratch_database_url
    await asyncio.to_thread(migrations.upgrade_catalog, url, "catalog_0005")
    scratch = await asyncpg.connect(url)
    insert = (
        "INSERT INTO conveyor.relays (key_prefix, relay_name, schemas, host, pid, grpc_addr) "
        "VALUES ($1, 'h-1', '{public}', 'h', 1, 'h:50051')"
    )
    try:
        assert "relays" not in await _tables(scratch, "conveyor")
        await scratch.execute(
            "INSERT INTO conveyor.consumers (consumer_group, consumer_name, topics, mode) "
            "VALUES ('g', 'c', '{t}', 'exactly-once')"
        )
        await asyncio.to_thread(migrations.upgrade_catalog, url)
        await scratch.execute(insert, "conveyor")
        await scratch.execute(insert, "staging")
        with pytest.raises(asyncpg.UniqueViolationError):
            await scratch.execute(insert, "staging")
        row = await scratch.fetchrow("SELECT * FROM conveyor.relays WHERE key_prefix = 'staging'")
        assert row is not None and row["started_at"] == row["heartbeat_at"]

        await asyncio.to_thread(migrations.downgrade_catalog, url, "catalog_0005")
        assert "relays" not in await _tables(scratch, "conveyor")
        assert await scratch.fetchval("SELECT count(*) FROM conveyor.consumers") == 1
        await asyncio.to_thread(migrations.upgrade_catalog, url)
        assert await scratch.fetchval("SELECT count(*) FROM conveyor.relays") == 0
        await scratch.execute(insert, "conveyor")
    finally:
        await scratch.close()


async def test_partition_tables_come_with_catalog_0007_and_go_with_its_downgrade(
    scratch_database_url: str,
) -> None:
    """catalog_0007: topic layouts refuse a partition count outside 1-1024 and an unknown
    dead-letter policy; leases are one per (deployment, group, topic, partition); going back to
    catalog_0006 drops both and keeps the relays; up again, both are empty and work."""
    url = scratch_database_url
    await asyncio.to_thread(migrations.upgrade_catalog, url, "catalog_0006")
    scratch = await asyncpg.connect(url)
    layout = (
        "INSERT INTO conveyor.topic_layouts (key_prefix, topic, partitions{c}) "
        "VALUES ($1, 't', $2{v})"
    )
    lease = (
        "INSERT INTO conveyor.partition_leases (key_prefix, consumer_group, topic, partition) "
        "VALUES ('conveyor', 'g', 't', $1)"
    )
    try:
        await scratch.execute(
            "INSERT INTO conveyor.relays (key_prefix, relay_name, schemas, host, pid) "
            "VALUES ('conveyor', 'h-1', '{public}', 'h', 1)"
        )
        await asyncio.to_thread(migrations.upgrade_catalog, url)
        await scratch.execute(layout.format(c="", v=""), "conveyor", 4)
        row = await scratch.fetchrow("SELECT * FROM conveyor.topic_layouts")
        assert row is not None
        assert (row["ordered"], row["on_dead_letter"], row["version"]) == (False, "park", 1)
        for bad in (0, 1025):
            with pytest.raises(asyncpg.CheckViolationError):
                await scratch.execute(layout.format(c="", v=""), "staging", bad)
        with pytest.raises(asyncpg.CheckViolationError):
            await scratch.execute(layout.format(c=", on_dead_letter", v=", 'drop'"), "staging", 2)
        await scratch.execute(lease, 0)
        with pytest.raises(asyncpg.UniqueViolationError):
            await scratch.execute(lease, 0)
        row = await scratch.fetchrow("SELECT * FROM conveyor.partition_leases")
        assert row is not None and (row["owner"], row["epoch"]) == (None, 0)

        await asyncio.to_thread(migrations.downgrade_catalog, url, "catalog_0006")
        tables = await _tables(scratch, "conveyor")
        assert "topic_layouts" not in tables and "partition_leases" not in tables
        assert await scratch.fetchval("SELECT count(*) FROM conveyor.relays") == 1
        await asyncio.to_thread(migrations.upgrade_catalog, url)
        assert await scratch.fetchval("SELECT count(*) FROM conveyor.topic_layouts") == 0
        await scratch.execute(lease, 1)
    finally:
        await scratch.close()


def test_cli_check_fails_until_migrated(database_url: str, schema: str) -> None:
    runner = CliRunner()
    args = ["--schema", schema, "--database-url", database_url]

    result = runner.invoke(app, ["check", *args])
    assert result.exit_code == 1
    assert f"run `conveyor migrate up --schema {schema}`" in result.stderr

    assert runner.invoke(app, ["up", *args]).exit_code == 0
    result = runner.invoke(app, ["check", *args])
    assert result.exit_code == 0, result.output
    assert f"{schema}: {APP_HEAD} (at head)" in result.stdout


def test_cli_rejects_bad_input(database_url: str, schema: str) -> None:
    runner = CliRunner()

    result = runner.invoke(app, ["check", "--schema", "Bad-Name", "--database-url", database_url])
    assert result.exit_code == 2
    assert "invalid schema name 'Bad-Name'" in result.stderr

    result = runner.invoke(app, ["up", "nope", "--schema", schema, "--database-url", database_url])
    assert result.exit_code == 2
    assert "Can't locate revision identified by 'nope'" in result.stderr

    result = runner.invoke(app, ["current", "--schema", schema, "--database-url", UNREACHABLE])
    assert result.exit_code == 1
    assert "cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1" in result.stderr
