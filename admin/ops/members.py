"""Each member of a consumer group on a stream, for the status snapshot: its pending entries,
idle time and redeliveries (XINFO CONSUMERS, XPENDING) with the host the consumer registry
names for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from redis.exceptions import RedisError

from conveyor.replies import text

log = logging.getLogger(__name__)

SCANNED = 1000
"""Pending entries of one member looked at for redeliveries: a bound on the status refresh's
work for a member holding many."""
_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member of a group on one stream."""

    name: str
    host: str
    """'' when the registry has no row for it (stopped, or the registry could not be read)."""
    pending: int
    idle: float
    """Seconds since it last tried to read or claim."""
    inactive: float
    """Seconds since a read or claim last brought it entries; -1 when unknown (Redis < 7.2)."""
    redelivered: int
    """Of its pending entries (the first SCANNED), those delivered more than once."""


class Hosts(Protocol):
    """The consumer registry's hosts (admin.catalog.Catalog)."""

    async def member_hosts(self) -> dict[tuple[str, str], str]: ...


async def hosts(catalog: Hosts) -> dict[tuple[str, str], str]:
    """(group, member) -> host; empty when the registry cannot be read now (members show
    without their hosts rather than not at all)."""
    try:
        async with asyncio.timeout(_TIMEOUT):
            return await catalog.member_hosts()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.debug("cannot read the members' hosts: %r", exc)
        return {}


async def members(
    redis: Any, stream: str, group: str, hosts: Mapping[tuple[str, str], str]
) -> tuple[MemberStatus, ...]:
    """The members of `group` on `stream`, by name; () when Redis cannot tell now."""
    try:
        async with asyncio.timeout(_TIMEOUT):
            found = await redis.xinfo_consumers(stream, group)
            out = []
            for c in found:
                name = text(c["name"])
                pending = int(c["pending"])
                redelivered = await _redelivered(redis, stream, group, name) if pending else 0
                out.append(
                    MemberStatus(
                        name=name,
                        host=hosts.get((group, name), ""),
                        pending=pending,
                        idle=int(c["idle"]) / 1000,
                        inactive=_seconds(c.get("inactive")),
                        redelivered=redelivered,
                    )
                )
    except (RedisError, OSError, TimeoutError) as exc:
        log.debug("cannot read the members of group %s of %s: %r", group, stream, exc)
        return ()
    return tuple(sorted(out, key=lambda m: m.name))


async def _redelivered(redis: Any, stream: str, group: str, name: str) -> int:
    rows = await redis.xpending_range(stream, group, "-", "+", SCANNED, consumername=name)
    return sum(1 for r in rows if int(r["times_delivered"]) > 1)


def _seconds(ms: Any) -> float:
    if ms is None or int(ms) < 0:
        return -1.0
    return int(ms) / 1000
