"""`conveyor demo --schema` pointed at an application's schema (`CONVEYOR_DEMO_SCHEMA` left
exported from another project, or `--schema signup` typed by a user who read "the demo's schema"
as "your schema"): the demo's relay drains every row of that outbox."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from admin import migrations
from conveyor.identity.v1 import events_pb2
from relay import enqueue
from tests.processes import run_conveyor

pytestmark = pytest.mark.slow


async def test_demo_never_publishes_an_applications_events(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # The app's event (topic `signup`) waits in its outbox for the app's relay. A user expects
    # the demo to refuse a schema whose outbox holds events that are not the demo's, or to leave
    # them alone; today the demo's relay publishes it under the demo's key prefix, where no
    # consumer of the app reads, and marks it published, so the app's relay never sends it.
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
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_DEMO_KEY_PREFIX": key_prefix,
    }
    demo = run_conveyor(["demo", "--events", "10", "--schema", schema], env, timeout=180)
    published = await pg.fetchval(
        f"SELECT published_at IS NOT NULL FROM {schema}.outbox WHERE event_id = $1", mine
    )
    assert not published, (demo.returncode, demo.stderr[-500:])
