"""The lease check an ordered worker runs before it dead-letters, when the database fails it."""

from __future__ import annotations

import asyncpg
import pytest

from admin.catalog.leases import ConsumerLeases
from consumers.leases import LeaseScope
from consumers.ordered import Held, ordered_parts
from consumers.settings import ConsumerSettings
from consumers.transactions import DatabaseDown
from conveyor import wire


async def test_a_database_failing_the_lease_check_is_an_outage_not_a_crash(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The check's statement cancelled by the server (its statement timeout, the lease row locked
    by a long transaction): the worker gets DatabaseDown, which its run loop backs off from and
    tries again, instead of an asyncpg error that ends the partition's worker until the lease runs
    out."""
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=1, server_settings={"statement_timeout": "200"}
    )
    locker = await asyncpg.connect(database_url)
    try:
        await locker.execute(
            "INSERT INTO conveyor.partition_leases (key_prefix, consumer_group, topic, partition, "
            "owner, epoch, expires_at) VALUES ($1, 'g', 'orders', 0, 'm-1', 1, now() + '1h')",
            key_prefix,
        )
        tx = locker.transaction()
        await tx.start()
        await locker.execute(
            "SELECT 1 FROM conveyor.partition_leases WHERE key_prefix = $1 FOR UPDATE", key_prefix
        )
        held = Held(
            store=ConsumerLeases(pool),
            scope=LeaseScope(key_prefix, "g", "orders"),
            owner="m-1",
            partition=0,
            epoch=1,
        )
        settings = ConsumerSettings(
            database_url=database_url,
            redis_url=redis_url,
            group="g",
            consumer="m-1",
            topics=["orders"],
            key_prefix=key_prefix,
        )
        parts = ordered_parts(
            held,
            wire.Keys("orders", key_prefix, 0),
            pool=pool,
            redis=None,
            policy="park",
            settings=settings,
        )
        with pytest.raises(DatabaseDown, match="lease check failed"):
            await parts["check_lease"]()
    finally:
        await locker.close()
        await pool.close()
        cleanup = await asyncpg.connect(database_url)
        try:
            await cleanup.execute(
                "DELETE FROM conveyor.partition_leases WHERE key_prefix = $1", key_prefix
            )
        finally:
            await cleanup.close()
