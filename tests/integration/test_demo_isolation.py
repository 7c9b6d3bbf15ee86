"""`conveyor demo --schema` pointed at an application's schema (`CONVEYOR_DEMO_SCHEMA` left
exported from another project, or `--schema signup` typed by a user who read "the demo's schema"
as "your schema") is refused before anything changes; the demo's own schema starts each run
without an earlier run's unpublished events."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from admin import migrations
from admin.cli import demo
from conveyor.identity.v1 import events_pb2
from relay import enqueue, enqueue_many
from tests.processes import run_conveyor

# The demo's names are fixed (schema conveyor_demo, key prefix conveyor-demo): one worker runs
# every test that uses them (`.ci/test` runs two).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo-names")]


def _env(database_url: str, redis_url: str, key_prefix: str) -> dict[str, str]:
    return {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_DEMO_KEY_PREFIX": key_prefix,
    }


async def test_demo_never_publishes_an_applications_events(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # The app's event (topic `signup`) waits in its outbox for the app's relay: the demo's
    # relay would publish it under the demo's key prefix, where no consumer of the app reads.
    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    async with pg.transaction():
        mine = await enqueue(
            pg,
            events_pb2.UserRegistered(user_id="alice", email="alice@example.com"),
            aggregate_type="user",
            aggregate_id="alice",
            topic="signup",
            schema=schema,
        )
    env = _env(database_url, redis_url, key_prefix)
    result = run_conveyor(["demo", "--events", "10", "--schema", schema], env, timeout=180)
    published = await pg.fetchval(
        f"SELECT published_at IS NOT NULL FROM {schema}.outbox WHERE event_id = $1", mine
    )
    assert not published, (result.returncode, result.stderr[-500:])
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"--schema {schema} holds outbox events of topics other than demo (signup)" in line
    assert "conveyor_demo" in line, "it names the schema to use instead"


async def test_a_schema_with_an_applications_tables_is_refused_untouched(
    database_url: str, redis_url: str, schema: str, key_prefix: str, pg: asyncpg.Connection
) -> None:
    await pg.execute(f"CREATE SCHEMA {schema}")
    await pg.execute(f"CREATE TABLE {schema}.users (id int PRIMARY KEY)")
    env = _env(database_url, redis_url, key_prefix)
    result = run_conveyor(["demo", "--events", "10", "--schema", schema], env, timeout=180)
    assert result.returncode == 2, result.stderr
    assert f"--schema {schema} holds tables the demo does not make (users)" in result.stderr
    tables = await pg.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema
    )
    assert [r[0] for r in tables] == ["users"], "nothing was migrated into it"


async def test_a_run_discards_an_earlier_runs_unpublished_events(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # A run stopped before its relay published everything leaves rows in the demo's outbox;
    # the next run must not publish them as if they were its own.
    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    async with pg.transaction():
        stale = await enqueue_many(pg, demo.demo_events("old", 3, schema), schema=schema)
    env = _env(database_url, redis_url, key_prefix)
    result = run_conveyor(["demo", "--events", "10", "--schema", schema], env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "discarded 3 unpublished events of an earlier demo run" in result.stderr
    left = await pg.fetchval(
        f"SELECT count(*) FROM {schema}.outbox WHERE event_id = ANY($1::uuid[])", stale
    )
    assert left == 0
