"""Status of ordered topics: per partition stream and group, the lease's owner and epoch and the
aggregates parked behind the group's open dead letters (`conveyor status`, GetStatus)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
from redis.exceptions import RedisError

from admin.catalog.layouts import named_keys
from admin.catalog.leases import ConsumerLeases, deployment_leases
from consumers.leases import Lease
from conveyor import wire
from conveyor.replies import text

if TYPE_CHECKING:
    from admin.ops.status import GroupStatus

log = logging.getLogger(__name__)

MAX_PARKED = 100
"""Parked aggregates listed per partition and group at most."""


async def with_leases(
    pool: asyncpg.Pool, redis: Any, prefix: str, groups: Sequence[GroupStatus]
) -> list[GroupStatus]:
    """`groups` with the lease and parked aggregates of every ordered partition filled in (the
    others as they are). A failure leaves them as they are too: status never fails on it."""
    try:
        found = await deployment_leases(pool, prefix)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.debug("cannot read partition leases: %r", exc)
        return list(groups)
    if not found:
        return list(groups)
    held: dict[tuple[str, str, int], Lease] = {(t, g, x.partition): x for t, g, x in found}
    out = []
    for g in groups:
        keys = named_keys(g.topic, prefix)
        lease = None if keys.partition is None else held.get((keys.topic, g.group, keys.partition))
        if lease is None:
            out.append(g)
            continue
        live = lease.owner is not None and (lease.expires_in or 0) > 0
        parked = await _parked(pool, redis, keys, g.group)
        out.append(
            dataclasses.replace(
                g,
                lease_owner=lease.owner or "" if live else "",
                lease_epoch=lease.epoch,
                parked_aggregates=tuple(parked),
            )
        )
    return out


async def _parked(pool: asyncpg.Pool, redis: Any, keys: wire.Keys, group: str) -> list[str]:
    """Aggregates of the group's open dead letters of the partition, from their entries."""
    try:
        ids = await ConsumerLeases(pool).open_dead_letters(keys.dlq, group)
        if not ids:
            return []
        pipe = redis.pipeline(transaction=False)
        for entry_id in ids[: MAX_PARKED * 2]:
            pipe.xrange(keys.dlq, entry_id, entry_id)
        aggregates: list[str] = []
        for page in await pipe.execute():
            for _, fields in page:
                agg = fields.get(wire.F_AGGREGATE_ID)
                if agg is not None and text(agg) not in aggregates:
                    aggregates.append(text(agg))
        return sorted(aggregates)[:MAX_PARKED]
    except (OSError, RedisError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.debug("cannot read parked aggregates of %s: %r", keys.events, exc)
        return []
