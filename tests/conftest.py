"""Shared fixtures: the real PostgreSQL and Redis, a fresh schema and key prefix per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from admin import migrations
from admin.bench import harness

DATABASE_URL = os.environ.get(
    "CONVEYOR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CONVEYOR_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _probe() -> None:
    conn = await asyncpg.connect(DATABASE_URL, timeout=5)
    await conn.close()
    r = aioredis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await r.ping()
    finally:
        await r.aclose()


@pytest.fixture(scope="session")
def services() -> tuple[str, str]:
    """The PostgreSQL and Redis URLs, checked once; an unreachable one fails every test loudly."""
    try:
        asyncio.run(_probe())
    except Exception as exc:  # noqa: BLE001 - any failure to reach a service is reported alike
        pytest.fail(
            f"PostgreSQL ({DATABASE_URL}) or Redis ({REDIS_URL}) is unreachable: {exc!r}. "
            "Run the README's test command, which starts them, or set CONVEYOR_DATABASE_URL "
            "and CONVEYOR_REDIS_URL.",
            pytrace=False,
        )
    return DATABASE_URL, REDIS_URL


@pytest.fixture
def database_url(services: tuple[str, str]) -> str:
    return services[0]


@pytest.fixture
def redis_url(services: tuple[str, str]) -> str:
    return services[1]


def _fresh_schema(database_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name

    async def drop() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    """A fresh, empty application schema name, dropped after the test."""
    yield from _fresh_schema(database_url)


@pytest.fixture
def other_schema(database_url: str) -> Iterator[str]:
    """A second fresh application schema name, dropped after the test."""
    yield from _fresh_schema(database_url)


@pytest.fixture
def migrated_schema(database_url: str, schema: str) -> str:
    """A fresh application schema migrated to head (and the catalog with it)."""
    migrations.upgrade(database_url, schema)
    return schema


@pytest.fixture
def key_prefix(database_url: str, redis_url: str) -> Iterator[str]:
    """A fresh key prefix (a deployment of its own); after the test every Redis key under it is
    deleted, and so is every catalog row of it (registry, dead letters, cursors, audit): a process a
    test killed cannot unregister itself."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix

    async def clean() -> None:
        r = aioredis.from_url(redis_url)
        try:
            keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
            for k in keys:
                await r.delete(k)
        finally:
            await r.aclose()
        await delete_catalog_rows(database_url, prefix)

    asyncio.run(clean())


async def delete_catalog_rows(database_url: str, prefix: str) -> None:
    """Delete the catalog rows of deployment `prefix`, in whichever catalog tables exist."""
    conn = await asyncpg.connect(database_url)
    try:
        await harness.delete_catalog_rows(conn, prefix)
    finally:
        await conn.close()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(redis_url)
    try:
        yield r
    finally:
        await r.aclose()
