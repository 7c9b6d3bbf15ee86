"""Ordered partitions: one worker per partition whose lease this member holds.

The worker of an ordered partition first takes over the group's pending entries of the partition
(whoever they were pending on) and applies them in stream order, then reads new entries. It
applies one batch at a time (no read-ahead: the gate needs each batch's outcome before the next),
each batch's transaction checking the lease; a lost lease ends the worker with nothing of the
batch committed. Events of an aggregate wait behind its failing or dead-lettered event
(`consumers.ordering.OrderedGate`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from consumers.deliveries import Delivery, Entry
from consumers.leases import LeaseLost, LeaseManager, LeaseScope, LeaseStore
from consumers.ordering import OrderedGate
from consumers.settings import ConsumerSettings
from consumers.signals import Reject
from consumers.transactions import DatabaseDown
from consumers.worker import TopicWorker
from conveyor import wire
from conveyor.replies import text

log = logging.getLogger(__name__)

_PARKED_PERIOD = 1.0
"""Seconds between reads of the catalog's open dead letters (the parked aggregates)."""
_OTHERS_PERIOD = 1.0
"""Seconds between looks for entries of the partition pending on other members."""
_RETRY_STREAM_PERIOD = 0.2
"""Seconds between reads of the group's retry stream (reprocessed dead letters)."""


class OrderedWorker(TopicWorker):
    """Applies one ordered partition for one group while this member holds its lease."""

    def __init__(
        self,
        topic: str,
        *,
        gate: OrderedGate,
        store: LeaseStore,
        redis: Any,
        check_lease: Callable[[], Awaitable[None]],
        **parts: Any,
    ) -> None:
        super().__init__(topic, **parts)
        self.gate = gate
        self._check_lease = check_lease
        """LeaseLost unless this member still holds the lease: checked before a dead letter,
        which no transaction fences."""
        self._store = store
        self._redis = redis
        self._taken = False
        self._backlog: list[Entry] = []
        self._next_parked = 0.0
        self._next_retry_read = 0.0
        self._next_others = 0.0

    async def _consume(self) -> None:
        try:
            await self._rounds()
        except BaseException:
            # A failed round may leave entries pending here unseen (a read whose reply was
            # lost): the next round takes the whole partition over again, in order.
            self._taken = False
            raise

    async def _rounds(self) -> None:
        s, streams = self._s, self.streams
        while not self._stopping.is_set():
            if not self._taken:
                await streams.ensure_groups()  # at 0, before anything is claimed or read
                self.gate.forget()
                self._retrier.forget()
                await self._refresh_parked(force=True)
                self._backlog = await self._take_over()
                self._taken = True
            await self._refresh_parked()
            entries, self._backlog = self._backlog[: s.batch_size], self._backlog[s.batch_size :]
            entries += await self._retrier.claim_due()
            now = time.monotonic()
            if now >= self._next_retry_read:
                self._next_retry_read = now + _RETRY_STREAM_PERIOD
                entries += await streams.read(streams.retry, s.batch_size, None)
            released = self.gate.released()
            idle = not (entries or released or self._backlog)
            room = s.batch_size - len(entries)
            if room > 0 and not self._backlog:
                new = await self._reader.read_new(room, wait=idle)
                now = time.monotonic()
                if new or now >= self._next_others:
                    # An owner that lost its lease may have read entries before it noticed:
                    # they are taken back before anything after them is applied.
                    self._next_others = now + _OTHERS_PERIOD
                    entries += await self._claim_others()
                entries += new
            await self._retrier.touch_waiting()
            batch = await self.prepare(entries)
            await self._finish_ordered(self.gate.admit(released + batch.deliveries), batch.settled)

    async def _take_over(self) -> list[Entry]:
        """Every entry of the partition pending in the group (on any member), now this one's, in
        stream order. Only the first of each aggregate counts the delivery as an attempt: the
        others were never tried (they waited behind it), unless their aggregate is parked."""
        streams = self.streams
        entries: list[Entry] = []
        for stream in (streams.retry, streams.keys.events):
            entries += await self._claim_all(stream)
        seen: set[bytes] = set()
        for e in entries:
            agg = None if e.raw is None else e.fields.get(wire.F_AGGREGATE_ID)
            if agg is None:
                continue
            if agg in seen or text(agg) in self.gate.parked:
                e.attempt = 1
            seen.add(agg)
        if entries:
            log.info(
                "took over pending entries: stream=%s group=%s count=%d",
                streams.keys.events,
                self._s.group,
                len(entries),
            )
        return entries

    async def _claim_all(self, stream: str) -> list[Entry]:
        found: dict[str, Entry] = {}
        cursor = "0-0"
        while True:
            claimed, deleted, cursor = await self.streams.autoclaim(
                stream, 0, self._s.batch_size, cursor
            )
            if deleted:
                self._reader.deleted(deleted, stream)
            for e in claimed:
                found.setdefault(e.entry_id, e)
            if cursor in ("0-0", "0"):
                break
        return [found[i] for i in sorted(found, key=_entry_order)]

    async def _claim_others(self) -> list[Entry]:
        """Entries of the partition pending on other members (a former owner), claimed."""
        events = self.streams.keys.events
        summary = await self._redis.xpending(events, self._s.group)
        others = [
            c for c in summary.get("consumers") or () if text(c["name"]) != self.streams.consumer
        ]
        if not others:
            return []
        log.info("claiming entries another member read: stream=%s", events)
        return await self._claim_all(events)

    async def _refresh_parked(self, *, force: bool = False) -> None:
        """The parked aggregates from the catalog's open dead letters of the group, with each
        aggregate read from its dead-letter entry (the catalog keeps no aggregate)."""
        if self.gate.policy != "park":
            return
        now = time.monotonic()
        if not force and now < self._next_parked:
            return
        self._next_parked = now + _PARKED_PERIOD
        dlq = self.streams.keys.dlq
        try:
            ids = await self._store.open_dead_letters(dlq, self._s.group)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if force:  # taking over without knowing what is parked could apply a parked event
                raise DatabaseDown(f"reading the parked aggregates: {exc!r}") from exc
            log.debug("parked aggregates not refreshed, kept: %r", exc)
            return
        aggregates: set[str] = set()
        if ids:
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xrange(dlq, entry_id, entry_id)
            for page in await pipe.execute():
                for _, fields in page:
                    if (agg := fields.get(wire.F_AGGREGATE_ID)) is not None:
                        aggregates.add(text(agg))
        self.gate.set_parked(aggregates)

    async def _finish_ordered(self, deliveries: list[Delivery], settled: list[Entry]) -> None:
        """Apply admitted deliveries; a failure blocks its aggregate (retry) or parks it (dead
        letter); the later events of its aggregate are held, not acknowledged."""
        gate = self.gate
        if deliveries:
            outcomes = await self._applier.apply(deliveries)
            failed, outcomes.failed = outcomes.failed, []
            settled += await self._settle(outcomes)
            gate.hold(outcomes.blocked)
            failing: set[str] = set()
            for d, error in sorted(failed, key=lambda f: gate.order_key(f[0])):
                agg = d.aggregate_id
                if agg in failing:  # an earlier event of its aggregate failed too
                    gate.hold([d])
                    continue
                failing.add(agg)
                dead = isinstance(error, Reject) or d.entry.attempt >= self._s.max_attempts
                if dead:
                    await self._check_lease()
                await self._failed(d, error)
                if dead:
                    gate.dead_lettered(agg)
                else:
                    gate.retry_scheduled(d)
        if settled:
            await self.streams.ack(settled)
            await self._poison.mark_reprocessed(settled)
        self.health.progressed()


@dataclass(frozen=True, slots=True)
class Held:
    """One lease as its holder took it."""

    store: LeaseStore
    scope: LeaseScope
    owner: str
    partition: int
    epoch: int


def ordered_parts(
    held: Held,
    keys: wire.Keys,
    *,
    pool: asyncpg.Pool,
    redis: Any,
    policy: str,
    settings: ConsumerSettings,
) -> dict[str, Any]:
    """What an ordered partition's worker takes beyond a topic worker's parts: the fence its
    applier runs before every COMMIT, the lease check before a dead letter, its gate."""
    bound = settings.dependency_timeout

    async def fence(conn: asyncpg.Connection) -> None:
        if not await held.store.fence(
            conn,
            held.scope,
            partition=held.partition,
            owner=held.owner,
            epoch=held.epoch,
            bound=bound,
        ):
            raise LeaseLost(
                f"topic={held.scope.topic} partition={held.partition} epoch={held.epoch}"
            )

    async def check_lease() -> None:
        async with pool.acquire(timeout=bound) as conn:
            await fence(conn)

    return {
        "fence": fence,
        "check_lease": check_lease,
        "gate": OrderedGate(keys.retry(settings.group), policy),
        "store": held.store,
        "redis": redis,
    }


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class OrderedTopic:
    """An ordered topic's partitions for one member: its leases, and a worker per partition
    held."""

    def __init__(
        self,
        topic: str,
        partitions: int,
        *,
        store: LeaseStore,
        scope: LeaseScope,
        member: str,
        ttl: float,
        build: Any,
    ) -> None:
        self.topic = topic
        self._build = build
        """(partition, epoch, stop event) -> OrderedWorker."""
        self.running: dict[int, tuple[OrderedWorker, asyncio.Event, asyncio.Task[None]]] = {}
        self.manager = LeaseManager(
            store,
            scope,
            member,
            partitions,
            ttl=ttl,
            gained=self._gained,
            released=self._stop_partition,
            lost=self._stop_partition,
        )

    def workers(self) -> list[OrderedWorker]:
        return [w for w, _, _ in self.running.values()]

    async def run(self, stopping: asyncio.Event) -> None:
        await self.manager.run(stopping)

    def _gained(self, partition: int, epoch: int) -> None:
        stop = asyncio.Event()
        worker: OrderedWorker = self._build(partition, epoch, stop)
        task = asyncio.create_task(self._run(partition, worker), name=f"ordered-{partition}")
        self.running[partition] = (worker, stop, task)

    async def _run(self, partition: int, worker: OrderedWorker) -> None:
        try:
            await worker.run()
        except LeaseLost:
            log.warning(
                "lost lease: topic=%s partition=%d; the batch rolled back, its new owner takes "
                "the entries over",
                self.topic,
                partition,
            )
            await self.manager.forget(partition)
        except Exception:
            log.exception(
                "ordered partition worker failed: topic=%s partition=%d", self.topic, partition
            )
            await self.manager.forget(partition)  # left to expire, then taken again
        finally:
            await worker.close()
            running = self.running.get(partition)
            if running is not None and running[0] is worker:
                del self.running[partition]

    async def _stop_partition(self, partition: int) -> None:
        """Stop the partition's worker after its batch in flight."""
        running = self.running.get(partition)
        if running is None:
            return
        _, stop, task = running
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
