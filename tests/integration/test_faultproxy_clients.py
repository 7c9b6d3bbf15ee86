"""The fault proxy between real clients and the shared servers: redis.asyncio and asyncpg work
through it, see its resets as connection errors, and reconnect afterwards."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.torture.faultproxy import FaultProxy


async def test_redis_through_the_proxy_sees_a_reset_and_reconnects(
    redis_url: str, key_prefix: str
) -> None:
    with FaultProxy.for_url(redis_url) as proxy:
        # No retries: the reset must surface as an error rather than be retried away.
        client = aioredis.from_url(proxy.url(redis_url), retry=Retry(NoBackoff(), 0))
        try:
            assert await client.ping()
            await client.set(f"{key_prefix}:a", b"1")
            assert await client.get(f"{key_prefix}:a") == b"1"
            proxy.reset()
            with pytest.raises(RedisConnectionError):
                await client.get(f"{key_prefix}:a")
            assert await client.get(f"{key_prefix}:a") == b"1"  # a fresh connection

            proxy.reset(after_bytes=1000)  # cut the next command half-way
            with pytest.raises(RedisConnectionError):
                await client.set(f"{key_prefix}:b", b"x" * 100_000)
            assert await client.get(f"{key_prefix}:b") is None  # the cut SET never ran
        finally:
            await client.aclose()
        counters = proxy.counters()
    assert counters.accepted == 3
    assert counters.resets == 2


async def test_asyncpg_through_the_proxy_sees_a_reset_and_reconnects(database_url: str) -> None:
    with FaultProxy.for_url(database_url) as proxy:
        conn = await asyncpg.connect(proxy.url(database_url), timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            proxy.reset()
            # "closed in the middle of operation", or "is closed" if asyncpg saw the reset first
            with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)):
                await conn.fetchval("SELECT 1")
            assert conn.is_closed()
        finally:
            await conn.close(timeout=5)
        conn = await asyncpg.connect(proxy.url(database_url), timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close(timeout=5)
        assert proxy.counters().accepted == 2
