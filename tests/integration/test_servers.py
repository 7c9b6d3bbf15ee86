"""The throwaway servers fault tests rely on: what survives a kill or restart, what a stop does."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.slow


async def _xadd_then_crash(server: RedisServer) -> int:
    """XADD one entry, SIGKILL the server, restart it and return the stream's length."""
    client = aioredis.from_url(server.url)
    try:
        await client.xadd("stream", {"field": "value"})
        await client.aclose()
        server.kill()
        server.restart()
        client = aioredis.from_url(server.url)
        return int(await client.xlen("stream"))
    finally:
        await client.aclose()


async def test_redis_with_appendfsync_always_keeps_an_acknowledged_entry_across_sigkill() -> None:
    with RedisServer(appendonly=True) as server:
        assert await _xadd_then_crash(server) == 1


async def test_redis_without_persistence_comes_back_empty_after_sigkill() -> None:
    with RedisServer() as server:
        assert await _xadd_then_crash(server) == 0


async def test_redis_stop_makes_connections_fail() -> None:
    with RedisServer() as server:
        server.stop()
        client = aioredis.from_url(server.url, socket_connect_timeout=2)
        try:
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
        finally:
            await client.aclose()


async def test_postgres_restart_keeps_a_committed_row() -> None:
    with PostgresServer() as server:
        conn = await asyncpg.connect(server.url)
        await conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO kept VALUES (1)")
        await conn.close()
        server.restart(mode="immediate")  # no shutdown checkpoint: the row comes back from the WAL
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM kept") == 1
        finally:
            await conn.close()


async def test_postgres_stop_makes_connections_fail() -> None:
    with PostgresServer() as server:
        conn = await asyncpg.connect(server.url)
        server.stop()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
        await conn.close()
        with pytest.raises(OSError):
            await asyncpg.connect(server.url, timeout=2)
