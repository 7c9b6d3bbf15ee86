"""A consumer process: one worker per stream (a topic's, or each partition's of a partitioned
topic), the registry heartbeat and housekeeping."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from contextlib import suppress
from types import TracebackType
from typing import Any

import asyncpg

from consumers import dead_letters, start_points
from consumers.applier import Applier
from consumers.catalog import Catalog, CatalogFactory, Member
from consumers.health import Health
from consumers.leases import LeaseScope, LeaseStore, LeaseStoreFactory
from consumers.metrics import ConsumerMetrics
from consumers.ordered import Held, OrderedTopic, OrderedWorker, ordered_parts
from consumers.poison_queue import PoisonQueue
from consumers.reader import Reader
from consumers.retention import Housekeeper, retention_warning
from consumers.retries import Retrier, RetrySchedule
from consumers.router import Router
from consumers.settings import ConsumerSettings
from consumers.status import ConsumerStatus
from consumers.streams import TopicStreams
from consumers.worker import TopicWorker
from conveyor import database, layouts, redis_client, wire
from conveyor.deadlines import pool_options, unanswered
from conveyor.layouts import Layout
from conveyor.outages import Outage, quiet_pool_reconnects, unreachable
from conveyor.retry import pause

log = logging.getLogger(__name__)


def worker_name(keys: wire.Keys) -> str:
    """A stream's worker's name (in `Consumer.workers`, health and status): the topic, or
    `topic:N` for partition N (as in its keys' hash tag)."""
    return keys.topic if keys.partition is None else f"{keys.topic}:{keys.partition}"


class Consumer:
    """Consumes the settings' topics for one group until `stop()`.

    `async with Consumer(router, settings, catalog=ConsumerCatalog) as consumer: await
    consumer.run()`; `stop()` (e.g. on SIGTERM) stops reading, lets the batch in flight finish and
    acknowledge, then `run()` returns. `catalog` builds the catalog on the consumer's pool
    (`admin.catalog.ConsumerCatalog`): dead letters are recorded there and the member registered.
    """

    def __init__(
        self,
        router: Router,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics | None = None,
        *,
        catalog: CatalogFactory,
        leases: LeaseStoreFactory | None = None,
    ) -> None:
        self.router = router
        self.settings = settings
        self.metrics = metrics or ConsumerMetrics()
        self.workers: dict[str, TopicWorker] = {}
        """A worker per stream, by `worker_name`: `orders`, or `orders:3` for a partition."""
        self.layouts: dict[str, Layout] = {}
        """The deployment's layouts as read at start: a topic's streams are those they say."""
        self._stopping = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._lanes: asyncpg.Pool | None = None
        self._redis: Any = None
        self._make_catalog = catalog
        self._make_leases = leases
        """Without one, no topic is consumed in order (every topic takes the leaderless path)."""
        self._leases: LeaseStore | None = None
        self.ordered: dict[str, OrderedTopic] = {}
        """Ordered topics (their layout says so): a worker per partition whose lease is held."""
        self._member: Member | None = None
        self._catalog: Catalog | None = None
        self._housekeeper: Housekeeper | None = None
        self._postgres = Outage("postgres", settings.database_address, log, "consumer")

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self, grpc_addr: str | None = None) -> None:
        """Connect, create the groups (at 0) and register in the catalog."""
        s = self.settings
        warning = retention_warning(s)
        if warning:
            log.warning("%s", warning)
        quiet_pool_reconnects()
        # A connection per topic for dead-letter marks, the trim lock and a transaction beside
        # it, the heartbeat, and the dead-letter catalog (the ops plane has a pool of its own);
        # the lanes' connections, where handlers' statements run unbounded, apart.
        named = database.server_settings(s.database_url, "consume", f"{s.group}/{s.consumer}")
        t = s.dependency_timeout
        streams = await self._open_pool(named, len(s.topics))
        if len(streams) > len(s.topics):  # partitioned topics: a connection per stream
            assert self._pool is not None
            await self._pool.close()
            streams = await self._open_pool(named, len(streams))
        assert self._pool is not None and self._catalog is not None
        self._lanes = await asyncpg.create_pool(
            s.database_url,
            min_size=0,
            max_size=s.partitions * len(streams),
            server_settings=named,
            **pool_options(t, statements=False),
        )
        self._redis = await redis_client.open(s.redis_url, timeout=t)  # a cluster, if it is one
        ordered = self._ordered_topics()
        self._housekeeper = Housekeeper(
            self._pool, self._redis, s, self.metrics, catalog=self._catalog, outage=self._postgres
        )
        for keys in streams:
            if keys.topic in ordered:
                continue
            self.workers[worker_name(keys)] = self._topic_worker(keys, self._pool, self._catalog)
        for topic, layout in ordered.items():
            self.ordered[topic] = self._ordered_topic(topic, layout)
        # Every stream's group at --start (ordered partitions' too, before their workers run).
        await start_points.create_groups(
            [TopicStreams(self._redis, k, s.group, s.consumer, timeout=t) for k in streams],
            s.start_id,
            named=s.start,
        )
        self._member = Member(
            key_prefix=s.key_prefix,
            group=s.group,
            name=s.consumer,
            topics=s.topics,
            mode=s.mode,
            ledger_schema=s.ledger_schema if s.exactly_once else None,
            host=socket.gethostname(),
            pid=os.getpid(),
            grpc_addr=grpc_addr,
        )
        await self._catalog.register(self._member)

    async def _open_pool(self, named: dict[str, str], streams: int) -> list[wire.Keys]:
        """Open the pool (a connection per stream consumed, and five more) and the catalog on
        it; return the keys of every stream of the settings' topics, by their layouts."""
        s = self.settings
        self._pool = await asyncpg.create_pool(
            s.database_url,
            min_size=1,
            max_size=streams + 5,
            server_settings=named,
            **pool_options(s.dependency_timeout),
        )
        self._catalog = self._make_catalog(self._pool)
        self.layouts = await self._catalog.layouts(s.key_prefix)
        return [k for topic in s.topics for k in layouts.streams(topic, s.key_prefix, self.layouts)]

    def _ordered_topics(self) -> dict[str, Layout]:
        """The settings' topics whose layout is ordered (none without a lease store: then
        every topic takes the leaderless path)."""
        s = self.settings
        ordered = {t: v for t, v in self.layouts.items() if v.ordered and t in s.topics}
        if self._make_leases is None or self._pool is None:
            for topic in ordered:
                log.warning(
                    "topic %s is ordered but this consumer has no lease store: it applies the "
                    "topic's partitions unordered (build it with leases=ConsumerLeases)",
                    topic,
                )
            return {}
        self._leases = self._make_leases(self._pool)
        return ordered

    def _ordered_topic(self, topic: str, layout: Layout) -> OrderedTopic:
        """An ordered topic's leases, and how a worker is built for a partition taken."""
        s, store = self.settings, self._leases
        assert store is not None and self._pool is not None and self._catalog is not None
        pool, catalog = self._pool, self._catalog
        scope = LeaseScope(s.key_prefix, s.group, topic)

        def build(partition: int, epoch: int, stop: asyncio.Event) -> TopicWorker:
            keys = wire.Keys(topic, s.key_prefix, partition)
            if self._stopping.is_set():
                stop.set()
            held = Held(store, scope, s.consumer, partition, epoch)
            parts = ordered_parts(
                held, keys, pool=pool, redis=self._redis, policy=layout.on_dead_letter, settings=s
            )
            return self._topic_worker(keys, pool, catalog, stopping=stop, **parts)

        return OrderedTopic(
            topic,
            layout.partitions,
            store=store,
            scope=scope,
            member=s.consumer,
            ttl=s.lease_ttl,
            build=build,
        )

    def _all_streams(self) -> list[wire.Keys]:
        """Keys of every stream consumed: housekeeping trims ordered partitions held or not."""
        s = self.settings
        return [k for t in s.topics for k in layouts.streams(t, s.key_prefix, self.layouts)]

    def all_workers(self) -> list[TopicWorker]:
        """Every worker running now: one per unordered topic, one per ordered partition held."""
        ordered = [w for topic in self.ordered.values() for w in topic.workers()]
        return [*self.workers.values(), *ordered]

    def _topic_worker(
        self, keys: wire.Keys, pool: asyncpg.Pool, catalog: Catalog, **ordered: Any
    ) -> TopicWorker:
        """The worker of one stream (a topic's, or one partition's) and its parts; `ordered`:
        the parts of an ordered partition's worker (`_ordered_topic`)."""
        s = self.settings
        topic = keys.topic
        stopping = ordered.pop("stopping", self._stopping)
        health = Health(worker_name(keys), s.group, self._postgres)
        streams = TopicStreams(self._redis, keys, s.group, s.consumer, timeout=s.dependency_timeout)
        applier = Applier(
            pool,
            group=s.group,
            ledger_schema=s.ledger_schema,
            exactly_once=s.exactly_once,
            partitions=s.partitions,
            stopping=stopping,
            on_trouble=health.unhealthy,
            backoff=s.outage_policy,
            outage=self._postgres,
            lanes=self._lanes,
            timeout=s.dependency_timeout,
            fence=ordered.pop("fence", None),
            ordered=bool(ordered),
        )
        schedule = RetrySchedule()
        poison = PoisonQueue(
            streams=streams,
            catalog=catalog,
            marking=applier.marking_dead_letter,
            settings=s,
            metrics=self.metrics,
        )
        reader = Reader(streams, schedule, s, self.metrics, held=poison.held)
        retrier = Retrier(streams, schedule, s, self.metrics, on_deleted=reader.deleted)
        return (OrderedWorker if ordered else TopicWorker)(
            topic,
            **ordered,
            streams=streams,
            applier=applier,
            reader=reader,
            retrier=retrier,
            poison=poison,
            health=health,
            router=self.router,
            settings=s,
            metrics=self.metrics,
            stopping=stopping,
        )

    def stop(self) -> None:
        """Begin a graceful stop."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def status(self) -> ConsumerStatus:
        """What the ops plane needs for health: a snapshot per topic worker."""
        workers = tuple(w.health.status() for w in self.all_workers())
        return ConsumerStatus(
            self.settings.group,
            self._stopping.is_set(),
            workers,
            postgres_up=self._postgres.since is None,
        )

    async def run(self) -> None:
        side = [
            asyncio.create_task(self._heartbeat(), name="consumer-heartbeat"),
            asyncio.create_task(self._housekeeping(), name="consumer-housekeeping"),
        ]
        try:
            await asyncio.gather(
                *(w.run() for w in self.workers.values()),
                *(o.run(self._stopping) for o in self.ordered.values()),
            )
        finally:
            for task in side:
                task.cancel()
            for task in side:
                with suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        self.stop()
        if self._catalog is not None and self._member is not None:
            with suppress(Exception):
                await self._catalog.unregister(self._member)
        for worker in self.workers.values():
            await worker.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._lanes is not None:
            await self._lanes.close()
        if self._pool is not None:
            await self._pool.close()

    async def _heartbeat(self) -> None:
        """Refresh the registry row every heartbeat interval, and every second while PostgreSQL
        is away (to tell when it answers again) or while a lane has waited on it longer than the
        dependency timeout: a handler's statement is not bounded, so a beat (which is) tells
        whether PostgreSQL still answers, or whether that lane waits on a dead connection."""
        assert self._catalog is not None and self._member is not None
        s, last = self.settings, time.monotonic()
        while not self._stopping.is_set():
            await pause(self._stopping, min(s.heartbeat_interval, 1.0))
            now = time.monotonic()
            doubt = self._postgres.since is not None or any(
                w.applying_for(now) > s.dependency_timeout for w in self.all_workers()
            )
            if now - last < (1.0 if doubt else s.heartbeat_interval):
                continue
            last = now
            try:
                await self._catalog.heartbeat(self._member)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._database_failed("consumer heartbeat failed", exc, postgres_alone=True)
            else:
                self._postgres.answered()

    def _database_failed(
        self, what: str, exc: BaseException, *, postgres_alone: bool = False
    ) -> None:
        """A failure of housekeeping work, retried later: PostgreSQL being away is logged as an
        outage (the details at DEBUG), anything else as a warning. A timeout counts as its
        outage when the work spoke to PostgreSQL alone (`postgres_alone`)."""
        if unanswered(exc) if postgres_alone else unreachable(exc):
            self._postgres.failed(exc)
            log.debug("%s: %r", what, exc)
        else:
            log.warning("%s: %r", what, exc)

    async def _housekeeping(self) -> None:
        """Record dead letters a crash kept from the catalog (at once on start), then, from one
        interval after start on, trim and clean up. One loop, so a dead letter is never
        re-recorded after the housekeeper removed it."""
        assert self._catalog is not None and self._housekeeper is not None
        first = True
        while not self._stopping.is_set():
            for worker in self.all_workers():
                try:
                    await self._catalog.reconcile(
                        worker.streams.keys, dead_letters.reader(worker.streams)
                    )
                except Exception as exc:  # noqa: BLE001 - retried next round
                    self._database_failed(
                        f"dead-letter reconcile failed: stream={worker.streams.keys.dlq}", exc
                    )
            if not first:
                try:
                    await self._housekeeper.run_once(self._all_streams())
                except Exception:  # a bug here must not end housekeeping for good
                    log.exception("housekeeping round failed; trying again next interval")
            first = False
            await pause(self._stopping, self.settings.housekeeping_interval)
