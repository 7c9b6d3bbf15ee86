"""Partition leases of an ordered topic: one owning member per partition per group.

Each member renews the leases it holds every `ttl / 3`, and rebalances: the live members of the
group on the topic (sorted by name) share the partitions round-robin (`share`); a member takes
the free or expired leases of its share and hands back those beyond it once the partition's work
in flight is done. A member applies a partition's events only while it holds the lease, and the
transaction of every batch checks it (`LeaseStore.fence`), so an owner that lost its lease while
paused cannot commit. The SQL lives in the catalog (`admin.catalog.leases`); the consumer knows
only the `LeaseStore` protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from conveyor.retry import pause

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 12.0
"""Seconds a lease lasts without renewal: how long a crashed owner's partitions wait at most."""


class LeaseLost(Exception):
    """The member no longer holds the partition's lease (at the epoch it took it): nothing of the
    batch committed, and the partition is left to its new owner."""


@dataclass(frozen=True, slots=True)
class LeaseScope:
    """The leases of one (deployment, consumer group, topic)."""

    key_prefix: str
    group: str
    topic: str


@dataclass(frozen=True, slots=True)
class Lease:
    """A partition's lease as the catalog shows it."""

    partition: int
    owner: str | None
    epoch: int
    expires_in: float | None
    """Seconds until it runs out (negative: expired); None when free."""


class LeaseStore(Protocol):
    """The catalog's partition leases and what ordered consumption reads beside them."""

    async def live_members(self, scope: LeaseScope, within: float) -> list[str]:
        """Names of the group's members consuming the topic whose registry heartbeat is newer
        than `within` seconds."""

    async def touch(self, scope: LeaseScope, member: str) -> None:
        """Refresh the member's registry heartbeat (leases need fresher ones than the registry)."""

    async def acquire(
        self, scope: LeaseScope, partition: int, owner: str, ttl: float
    ) -> int | None:
        """Take the partition's lease if it is free or expired (raising its epoch); the epoch
        taken, or None when another member holds it."""

    async def renew(
        self, scope: LeaseScope, owner: str, held: dict[int, int], ttl: float
    ) -> set[int]:
        """Extend the leases `held` (partition -> epoch) still held at that epoch; the
        partitions still held."""

    async def release(self, scope: LeaseScope, owner: str, held: dict[int, int]) -> None:
        """Free the leases `held` (partition -> epoch) still held at that epoch."""

    async def leases(self, scope: LeaseScope) -> list[Lease]:
        """Every lease row of the scope, by partition."""

    async def fence(
        self,
        conn: asyncpg.Connection,
        scope: LeaseScope,
        *,
        partition: int,
        owner: str,
        epoch: int,
        bound: float | None = None,
    ) -> bool:
        """In `conn`'s transaction: whether `owner` still holds the partition at `epoch`,
        locking the lease row FOR SHARE until the transaction ends (a takeover waits for it)."""

    async def open_dead_letters(self, dlq_stream: str, group: str) -> list[str]:
        """Entry ids of the group's dead letters in `dlq_stream` that are open or being
        reprocessed."""


def share(members: Sequence[str], partitions: int, me: str) -> set[int]:
    """The partitions `me` owns in the fair share: sorted members, partitions round-robin."""
    ordered = sorted(set(members) | {me})
    at = ordered.index(me)
    return {p for p in range(partitions) if p % len(ordered) == at}


LeaseStoreFactory = Callable[[asyncpg.Pool], LeaseStore]
"""Builds the lease store on the consumer's pool (`admin.catalog.leases.ConsumerLeases`)."""

Gained = Callable[[int, int], None]
"""Told a partition and the epoch taken: start its worker."""
Released = Callable[[int], Awaitable[None]]
"""Stop a partition's worker once its work in flight is done (a hand-back or a stop)."""
Lost = Callable[[int], Awaitable[None]]
"""Stop a partition's worker at once: another member may own it already."""


class LeaseManager:
    """Holds, renews, takes and hands back one member's leases of one ordered topic."""

    def __init__(
        self,
        store: LeaseStore,
        scope: LeaseScope,
        member: str,
        partitions: int,
        *,
        ttl: float = DEFAULT_LEASE_TTL,
        gained: Gained,
        released: Released,
        lost: Lost,
    ) -> None:
        self._store = store
        self.scope = scope
        self.member = member
        self.partitions = partitions
        self.ttl = ttl
        self.held: dict[int, int] = {}
        """Partition -> epoch of the leases this member holds."""
        self._gained = gained
        self._released = released
        self._lost = lost

    def epoch(self, partition: int) -> int | None:
        return self.held.get(partition)

    async def forget(self, partition: int) -> None:
        """The partition's worker found its lease lost (the fence failed): no longer held."""
        self.held.pop(partition, None)

    async def run(self, stopping: asyncio.Event) -> None:
        """Rebalance every ttl / 3 until stopped, then hand every lease back."""
        try:
            while not stopping.is_set():
                try:
                    await self.tick()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("lease round failed: topic=%s error=%r", self.scope.topic, exc)
                await pause(stopping, self.ttl / 3)
        finally:
            await self.release_all()

    async def tick(self) -> None:
        """One round: renew, drop what was lost, hand back what is beyond the share, take the
        free or expired leases of the share."""
        store, scope, me = self._store, self.scope, self.member
        await store.touch(scope, me)
        if self.held:
            kept = await store.renew(scope, me, dict(self.held), self.ttl)
            for partition in sorted(set(self.held) - kept):
                log.warning(
                    "lost lease: topic=%s group=%s partition=%d member=%s",
                    scope.topic,
                    scope.group,
                    partition,
                    me,
                )
                self.held.pop(partition, None)
                await self._lost(partition)
        members = await store.live_members(scope, self.ttl)
        mine = share(members, self.partitions, me)
        for partition in sorted(set(self.held) - mine):
            epoch = self.held[partition]
            await self._released(partition)  # its work in flight finishes first
            self.held.pop(partition, None)
            await store.release(scope, me, {partition: epoch})
            log.info(
                "lease handed back: topic=%s group=%s partition=%d member=%s",
                scope.topic,
                scope.group,
                partition,
                me,
            )
        for partition in sorted(mine - set(self.held)):
            taken = await store.acquire(scope, partition, me, self.ttl)
            if taken is not None:
                self.held[partition] = taken
                log.info(
                    "lease taken: topic=%s group=%s partition=%d member=%s epoch=%d",
                    scope.topic,
                    scope.group,
                    partition,
                    me,
                    taken,
                )
                self._gained(partition, taken)

    async def release_all(self) -> None:
        """A clean stop: every partition's work finishes, then its lease is freed."""
        held = dict(self.held)
        for partition in sorted(held):
            await self._released(partition)
        self.held.clear()
        if held:
            try:
                await self._store.release(self.scope, self.member, held)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("leases not released, they expire: error=%r", exc)
