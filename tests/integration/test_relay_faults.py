"""The relay rides out Redis and PostgreSQL outages without losing an event (BRIEF guarantee 2)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from admin import migrations
from conveyor import redis_client
from tests.integration.relay_support import drained, fill, running_relay, stream_ids
from tests.processes import wait_until
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.slow

FAST_RETRY = {"backoff_initial": 0.05, "backoff_max": 0.5, "monitor_interval": 0.2}


@pytest.fixture
async def aof_redis() -> AsyncIterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server


async def test_redis_with_fsync_always_down_for_10s_loses_nothing(
    pg: asyncpg.Connection, database_url: str, migrated_schema: str, aof_redis: RedisServer
) -> None:
    s, prefix = migrated_schema, "faults"
    settings = {
        "database_url": database_url,
        "redis_url": aof_redis.url,
        "schemas": (s,),
        "key_prefix": prefix,
        "poll_interval": 0.05,
        **FAST_RETRY,
    }
    r = redis_client.connect(aof_redis.url)
    try:
        async with running_relay(**settings) as relay:
            before = await fill(pg, s, 3000)
            await wait_until(lambda: drained(pg, s), what="first part published")
            aof_redis.stop()
            during = await fill(pg, s, 2000)  # the business keeps committing
            await asyncio.sleep(10)
            assert not await drained(pg, s), "nothing can be published while Redis is down"
            assert relay.forwarders[s].last_error is not None, "the failure is visible"
            aof_redis.start()
            after = await fill(pg, s, 1000)
            await wait_until(lambda: drained(pg, s), timeout=30, what="backlog published")
        published = await stream_ids(r, prefix)
    finally:
        await r.aclose()
    assert set(published) == set(before + during + after), "every event is in the stream"
    assert published[: len(before)] == before, "what was acknowledged before the stop survived"
    assert relay.redis_reset is None, "an fsync-always restart is not reported as data loss"


async def test_a_redis_restart_that_lost_streams_is_reported_loudly(
    pg: asyncpg.Connection,
    database_url: str,
    migrated_schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = migrated_schema
    with RedisServer() as server:
        settings = {
            "database_url": database_url,
            "redis_url": server.url,
            "schemas": (s,),
            "key_prefix": "lossy",
            **FAST_RETRY,
        }
        async with running_relay(**settings) as relay:
            await fill(pg, s, 100)
            await wait_until(lambda: drained(pg, s), what="published")
            await asyncio.sleep(0.5)  # the monitor has seen the first run id
            server.restart()  # nothing on disk: the stream is gone

            async def reported() -> bool:
                return relay.redis_reset is not None

            await wait_until(reported, timeout=15, what="the reset to be noticed")
    assert relay.redis_reset is not None
    assert "lost streams lossy:{identity}:events" in relay.redis_reset
    assert "conveyor relay replay" in relay.redis_reset
    assert any("REDIS DATA LOSS" in r.message for r in caplog.records)


async def test_postgres_restart_under_a_running_relay(redis_url: str) -> None:
    schema, prefix = "faults", f"pgr{uuid.uuid4().hex[:8]}"
    r = redis_client.connect(redis_url)
    with PostgresServer() as server:
        await asyncio.to_thread(migrations.upgrade, server.url, schema)
        settings = {
            "database_url": server.url,
            "redis_url": redis_url,
            "schemas": (schema,),
            "key_prefix": prefix,
            "poll_interval": 3600,
            **FAST_RETRY,
        }
        try:
            async with running_relay(**settings):
                conn = await asyncpg.connect(server.url)
                before = await fill(conn, schema, 500)
                await wait_until(lambda: drained(conn, schema), what="first part published")
                await conn.close()
                await asyncio.to_thread(server.restart, "immediate")  # a crash, WAL replay
                conn = await asyncpg.connect(server.url)
                after = await fill(conn, schema, 500)
                # poll_interval is an hour: only a re-established LISTEN or the retry loop
                # can bring these out.
                await wait_until(lambda: drained(conn, schema), timeout=30, what="published")
                await conn.close()
            published = await stream_ids(r, prefix)
        finally:
            await r.delete(f"{prefix}:{{identity}}:events")
            await r.aclose()
    assert set(published) == set(before + after)


async def test_redis_loss_is_reported_while_events_keep_flowing(
    pg: asyncpg.Connection, database_url: str, migrated_schema: str
) -> None:
    s = migrated_schema
    with RedisServer() as server:
        settings = {
            "database_url": database_url,
            "redis_url": server.url,
            "schemas": (s,),
            "key_prefix": "flowing",
            "poll_interval": 0.05,
            **FAST_RETRY,
        }
        async with running_relay(**settings) as relay:
            await fill(pg, s, 500)
            await wait_until(lambda: drained(pg, s), what="published")
            await asyncio.sleep(0.6)  # the monitor has counted the stream's entries
            server.restart()  # nothing on disk
            await fill(pg, s, 50)  # traffic recreates the stream before the next check

            async def reported() -> bool:
                return relay.redis_reset is not None

            await wait_until(reported, timeout=15, what="the loss to be reported")
    assert relay.redis_reset is not None
    assert "flowing:{identity}:events" in relay.redis_reset
