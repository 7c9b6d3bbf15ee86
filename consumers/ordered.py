"""Ordered partitions: one worker per partition whose lease this member holds.

The worker of an ordered partition first takes over the group's pending entries of the partition
(whoever they were pending on), a page at a time (`consumers.ordered_backlog`), and applies them
in stream order, then reads new entries. It
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

from consumers.catalog import DeadLetterRow
from consumers.deliveries import Delivery, Entry, Poison
from consumers.leases import LeaseLost, LeaseManager, LeaseScope, LeaseStore
from consumers.ordered_backlog import PendingPages
from consumers.ordering import HELD_BATCHES, OrderedGate
from consumers.settings import ConsumerSettings
from consumers.signals import Reject
from consumers.transactions import DatabaseDown
from consumers.worker import Batch, TopicWorker
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
        self._pages = PendingPages(self.streams, gate, self._reader, self._s.batch_size)
        """Pending entries to take back before new ones are read (a takeover, a release)."""
        self._next_parked = 0.0
        self._next_retry_read = 0.0
        self._next_others = 0.0
        self._dead_read: list[Entry] = []
        """Entries of the batch being prepared that went to the dead-letter stream as read."""
        self._refused: dict[tuple[str, str], str] = {}
        """(stream, entry id) -> aggregate of the entries whose dead letters Redis refused for
        want of memory (pending, `PoisonQueue.held`): they park their aggregates until
        written."""
        self._unlisted: dict[str, str] = {}
        """Dead-letter entry id -> aggregate of the dead letters this worker wrote that the
        catalog did not list yet (its write failed; the reconciler adds them later): they park
        their aggregates as the catalog's open ones do."""

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
                self._pages.take_over()
                self._taken = True
            await self._refresh_parked()
            released = self.gate.released()
            if marks := self.gate.take_spilled():
                self._pages.catch_up(marks)
            entries = await self._pages.next() if self._pages.active else []
            entries += await self._retrier.claim_due()
            now = time.monotonic()
            if now >= self._next_retry_read:
                self._next_retry_read = now + _RETRY_STREAM_PERIOD
                entries += await streams.read(streams.retry, s.batch_size, None)
            idle = not (entries or released or self._pages.active)
            room = s.batch_size - len(entries)
            if room > 0 and not self._pages.active:
                new = await self._reader.read_new(room, wait=idle)
                now = time.monotonic()
                if new or now >= self._next_others:
                    # An owner that lost its lease may have read entries before it noticed:
                    # they are taken back before anything after them is applied.
                    self._next_others = now + _OTHERS_PERIOD
                    entries += await self._claim_others()
                entries += new
            await self._retrier.touch_waiting()
            if self._poison.held:  # dead letters Redis had no memory for
                await self._poison.retry_held()
            self._dead_read = []
            batch = await self.prepare(entries)
            admitted = self.gate.behind(
                self.gate.admit(released + batch.deliveries), self._dead_read
            )
            await self._finish_ordered(admitted, batch.settled)

    async def prepare(self, entries: list[Entry]) -> Batch:
        """Decode a batch as a topic worker does, after checking the lease when an entry is
        over the attempts cap (it goes to the dead-letter stream as it is read): each such
        entry, and each that cannot be decoded, is noted: the gate holds what
        follows them (`OrderedGate.behind`)."""
        most = self._s.max_attempts
        over = [e for e in entries if e.raw is not None and e.attempt > most]
        if over:
            await self._check_lease()
        self._dead_read += over
        return await super().prepare(entries)

    async def _poisoned(self, entry: Entry, poison: Poison) -> DeadLetterRow | None:
        await self._check_lease()  # no transaction fences a dead letter
        row = await super()._poisoned(entry, poison)
        self._dead_read.append(entry)
        agg = None if entry.raw is None else entry.fields.get(wire.F_AGGREGATE_ID)
        if row is not None and agg is not None and self.gate.policy == "park":
            self._unlisted[row.dlq_entry_id] = text(agg)
        return row

    async def _claim_others(self) -> list[Entry]:
        """Entries of the partition pending on other members (a former owner), claimed; only
        theirs: claiming this member's own held entries again would count a delivery each time
        and could put them over max_attempts without a try."""
        events = self.streams.keys.events
        ids = await self.streams.pending_on_others(events, self._s.batch_size)
        if not ids:
            return []
        log.info("claiming entries another member read: stream=%s", events)
        claimed = await self.streams.claim_ids(events, sorted(ids, key=_entry_order))
        return sorted(claimed, key=lambda e: _entry_order(e.entry_id))

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
            # Looked up first: one recorded after this shows among the open ones read next.
            listed = set()
            if self._unlisted:
                listed = await self._store.recorded_dead_letters(dlq, list(self._unlisted))
            ids = await self._store.open_dead_letters(dlq, self._s.group)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if force:  # taking over without knowing what is parked could apply a parked event
                raise DatabaseDown(f"reading the parked aggregates: {exc!r}") from exc
            log.debug("parked aggregates not refreshed, kept: %r", exc)
            return
        self._unlisted = {i: a for i, a in self._unlisted.items() if i not in listed}
        held = self._poison.held
        self._refused = {k: a for k, a in self._refused.items() if k in held}
        aggregates = set(self._unlisted.values()) | set(self._refused.values())
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
                row = await self._failed(d, error)
                if dead:
                    gate.dead_lettered(agg)
                    if row is not None:
                        self._unlisted[row.dlq_entry_id] = agg
                    elif (d.entry.stream, d.entry.entry_id) in self._poison.held:
                        self._refused[d.entry.stream, d.entry.entry_id] = agg
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
        try:
            async with pool.acquire(timeout=bound) as conn:
                await fence(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The database failing the check is an outage like any other: the worker backs off
            # and checks again, rather than stopping the partition until the lease runs out.
            raise DatabaseDown(f"lease check failed: {exc!r}") from exc

    return {
        "fence": fence,
        "check_lease": check_lease,
        "gate": OrderedGate(
            keys.retry(settings.group), policy, cap=HELD_BATCHES * settings.batch_size
        ),
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
