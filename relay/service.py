"""A relay process: one forwarder per schema, a NOTIFY listener, a monitor and a cleaner."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from types import TracebackType
from typing import Any

import asyncpg

from conveyor import database, redis_client
from conveyor.deadlines import pool_options, unanswered
from conveyor.layouts import Layout, LayoutSource, routing_changes
from conveyor.outages import Outage, describe, quiet_pool_reconnects
from conveyor.retry import pause
from relay import replicas
from relay.errors import LayoutChanged, NotReplicated
from relay.forwarder import Forwarder
from relay.metrics import RelayMetrics
from relay.notify import Listener, Listeners, NotifyListener
from relay.publisher import StreamPublisher
from relay.registry import (
    LayoutsFactory,
    Registry,
    RegistryFactory,
    RelayProcess,
    process_name,
    this_process,
)
from relay.settings import RelaySettings
from relay.status import Backlog, ForwarderStatus, RelayStatus
from relay.store import OutboxStore

log = logging.getLogger(__name__)


class Relay:
    """Drains the outbox of every configured schema into Redis until `stop()` is called.

    `async with Relay(settings) as relay: await relay.run()`; `stop()` (e.g. on SIGTERM) lets the
    batches in flight finish, then `run()` returns. With `registry` (building the catalog's
    relay registry on the relay's pool, `admin.catalog.RelayRegistry`) the relay registers at
    start, beats every `heartbeat_interval` and leaves on close; without one it is not listed.
    With `layouts` (`admin.catalog.layouts.CatalogLayouts`) it routes the events of partitioned
    topics to their partitions' streams by the layouts read at start, looks again every
    `heartbeat_interval`, and stops when a topic's partition count changed: `run()` then raises
    LayoutChanged. Without one every topic is unpartitioned.
    """

    def __init__(
        self,
        settings: RelaySettings,
        metrics: RelayMetrics | None = None,
        *,
        registry: RegistryFactory | None = None,
        layouts: LayoutsFactory | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or RelayMetrics()
        self.forwarders: dict[str, Forwarder] = {}
        self.started_at = time.time()
        self.redis_reset: str | None = None
        """Last Redis reset noticed that lost streams, as a message; None when none was."""
        self._postgres_up: bool | None = None
        self._stopping = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._redis: Any = None
        self._publisher: StreamPublisher | None = None
        self._listener: NotifyListener | None = None
        self._stores: list[OutboxStore] = []
        self._listeners: dict[str, Listeners] = {}
        self._registered_as: Listener | None = None
        """The LISTEN connection whose rows the listeners tables hold; None until registered."""
        """schema -> its listeners table, where this relay says whether it waits for NOTIFY."""
        self._redis_outage = Outage("redis", settings.redis_address, log, "relay")
        self._postgres_outage = Outage("postgres", settings.database_address, log, "relay")
        self._listen_failing = False
        """LISTEN failed on a PostgreSQL that answers (and was logged once)."""
        self._make_registry = registry
        self._registry: Registry | None = None
        self._registered: RelayProcess | None = None
        self._make_layouts = layouts
        self._layout_source: LayoutSource | None = None
        self.layouts: dict[str, Layout] = {}
        """The layouts the relay routes by (read at start)."""
        self.layout_changed: LayoutChanged | None = None
        """Set when the catalog's layouts stopped matching `layouts`; the relay then stops."""

    async def __aenter__(self) -> Relay:
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
        """Open the connection pool and the Redis client, and register (with `grpc_addr`, where
        the ops plane answers) when given a registry; fails if PostgreSQL is unreachable."""
        s = self.settings
        quiet_pool_reconnects()
        size = s.concurrency * len(s.schemas) + 4  # + cleanup, the monitor, heartbeat, a spare
        named = database.server_settings(s.database_url, "relay", process_name())
        self._pool = await asyncpg.create_pool(
            s.database_url,
            min_size=1,
            max_size=size,
            reset=_keep_session,
            server_settings=named,
            **pool_options(s.dependency_timeout),
        )
        if self._make_layouts is not None:
            self._layout_source = self._make_layouts(self._pool)
            self.layouts = await self._layout_source.layouts(s.key_prefix)
        self._redis = await redis_client.open(s.redis_url, timeout=s.dependency_timeout)
        self._publisher = StreamPublisher(
            self._redis,
            s.key_prefix,
            timeout=s.dependency_timeout,
            layouts=self.layouts,
            wait_replicas=s.wait_replicas,
            wait_timeout=s.wait_timeout,
            on_unreplicated=self._unreplicated,
        )
        if s.wait_replicas:
            await replicas.warn_if_short(self._publisher, s.wait_replicas)
        for schema in s.schemas:
            store = OutboxStore(
                self._pool, schema, keep_published=s.retention > 0, timeout=s.dependency_timeout
            )
            self._stores.append(store)
            self.forwarders[schema] = Forwarder(
                store, self._publisher, s, self.metrics, self._stopping
            )
        if s.listen:
            self._listener = NotifyListener(
                s.database_url, s.schemas, self._wake, timeout=s.dependency_timeout
            )
            self._listeners = {schema: Listeners(self._pool, schema) for schema in s.schemas}
        if self._make_registry is not None:
            self._registry = self._make_registry(self._pool)
            me = this_process(s.key_prefix, s.schemas, grpc_addr)
            await self._registry.register(me)
            self._registered = me
        if self._layout_source is not None:  # one set before it registered was not refused
            LayoutChanged.check(self.layouts, await self._layout_source.layouts(s.key_prefix))

    def _unreplicated(self, exc: NotReplicated) -> None:
        self.metrics.unreplicated.add(1)
        log.debug("batch not replicated: %s", exc)  # the forwarder logs the failed batch

    def stop(self) -> None:
        """Begin a graceful stop: no new batches; those in flight finish."""
        self._stopping.set()
        for forwarder in self.forwarders.values():
            forwarder.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def status(self) -> RelayStatus:
        """What the ops plane needs for health: the relay's state and a snapshot per forwarder."""
        forwarders = tuple(
            ForwarderStatus(schema, f.last_error, f.last_progress, self._backlog(schema))
            for schema, f in self.forwarders.items()
        )
        return RelayStatus(self._stopping.is_set(), self._postgres_up, self.redis_reset, forwarders)

    async def run(self) -> None:
        """Forward until `stop()`; housekeeping runs beside the forwarders."""
        side = [asyncio.create_task(self._monitor(), name="relay-monitor")]
        if self.settings.retention > 0:
            side.append(asyncio.create_task(self._clean(), name="relay-cleanup"))
        if self._registered is not None:
            side.append(asyncio.create_task(self._heartbeat(), name="relay-heartbeat"))
        if self._layout_source is not None:
            side.append(asyncio.create_task(self._watch_layouts(), name="relay-layouts"))
        try:
            await asyncio.gather(*(f.run() for f in self.forwarders.values()))
        finally:
            for task in side:
                task.cancel()
            for task in side:
                with suppress(asyncio.CancelledError):
                    await task
        if self.layout_changed is not None:
            raise self.layout_changed

    async def _watch_layouts(self) -> None:
        """Every heartbeat interval: stop the relay when a topic's partition count changed."""
        assert self._layout_source is not None
        while not self._stopping.is_set():
            await pause(self._stopping, self.settings.heartbeat_interval)
            if self._stopping.is_set():
                return
            try:
                now = await self._layout_source.layouts(self.settings.key_prefix)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.debug("reading the topic layouts failed, will retry: %r", exc)
                continue
            if changes := routing_changes(self.layouts, now):
                self.layout_changed = LayoutChanged(changes)
                log.error("TOPIC LAYOUT CHANGED: %s", self.layout_changed)
                self.stop()
                return

    def _backlog(self, schema: str) -> Backlog | None:
        measured = self.metrics.backlog.get(schema)
        return None if measured is None else Backlog(*measured)

    async def close(self) -> None:
        self.stop()
        if self._registry is not None and self._registered is not None:
            with suppress(Exception):  # a row left behind shows the relay absent, no worse
                await self._registry.unregister(self._registered)
            self._registered = None
        if self._listener is not None:
            me = self._registered_as
            if me is not None and self._listener.connected:
                for listeners in self._listeners.values():
                    with suppress(Exception):  # a row left behind is swept by the next relay
                        await listeners.unregister(me)
            await self._listener.close()
        if self._redis is not None:
            await self._redis.aclose()
        for store in self._stores:
            await store.close()
        if self._pool is not None:
            await self._pool.close()

    async def _heartbeat(self) -> None:
        assert self._registry is not None and self._registered is not None
        while not self._stopping.is_set():
            await pause(self._stopping, self.settings.heartbeat_interval)
            if self._stopping.is_set():
                return
            try:
                await self._registry.heartbeat(self._registered)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if unanswered(exc):  # the outage line says it
                    self._postgres_down(exc)
                    log.debug("relay heartbeat failed: %r", exc)
                else:
                    log.warning("relay heartbeat failed, will retry: %r", exc)

    def _wake(self, schema: str) -> None:
        forwarder = self.forwarders.get(schema)
        if forwarder is not None:
            forwarder.wake()

    async def _monitor(self) -> None:
        rounds = 0
        while not self._stopping.is_set():
            try:
                await self._check_listener(alive=rounds % 5 == 4)
                await self._check_redis()
                if rounds % 5 == 0:
                    await self._measure_backlog()
                if rounds % 30 == 29:
                    await self._sweep_listeners()
                rounds += 1
            except Exception:  # a bug here must not end monitoring for good
                log.exception("relay monitor round failed; trying again next interval")
            await pause(self._stopping, self.settings.monitor_interval)

    async def _check_listener(self, *, alive: bool = False) -> None:
        """Reconnect the LISTEN connection when it is down; with `alive`, first make sure that
        one that looks up still answers."""
        if self._listener is None:
            return
        if alive and self._listener.connected:
            try:
                await self._listener.check()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._listen_failed(exc, "the LISTEN connection stopped answering")
        if not self._listener.connected:
            self._registered_as = None
            for forwarder in self.forwarders.values():
                forwarder.listen(None)  # no NOTIFY reaches it now: it polls
            try:
                await self._listener.connect()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._listen_failed(exc, "cannot LISTEN for outbox notifications")
                return
            for forwarder in self.forwarders.values():
                forwarder.wake()  # rows may have committed while nobody listened
        if self._registered_as is None:
            await self._register()

    async def _register(self) -> None:
        """Give this relay's LISTEN connection its row in every schema's listeners table."""
        assert self._listener is not None and self._listener.me is not None
        me = self._listener.me
        try:
            for listeners in self._listeners.values():
                await listeners.register(me)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Still listening: NOTIFYs sent while no relay says busy wake it; it polls too.
            self._listen_failed(exc, "cannot register in the listeners table")
            return
        self._registered_as = me
        if self._listen_failing:
            self._listen_failing = False
            log.info("listening for outbox notifications again")
        for schema, forwarder in self.forwarders.items():
            # Its row says busy: it looks for rows that committed while nobody listened.
            forwarder.listen(self._listeners[schema].row(me))

    def _listen_failed(self, exc: BaseException, what: str) -> None:
        if unanswered(exc):  # the outage line says it
            self._postgres_down(exc)
            log.debug("%s: %r", what, exc)
        elif not self._listen_failing:
            self._listen_failing = True
            log.warning("%s, polling meanwhile: %r", what, exc)

    async def _sweep_listeners(self) -> None:
        for listeners in self._listeners.values():
            try:
                await listeners.sweep()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.debug("sweeping the listeners table failed: %r", exc)
                return

    async def _check_redis(self) -> None:
        assert self._publisher is not None
        try:
            report = await self._publisher.check_reset()
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "down" here
            self.metrics.dependency_up["redis"] = False
            self._redis_outage.failed(exc)
            return
        self.metrics.dependency_up["redis"] = True
        self._redis_outage.answered()
        if report is None:
            return
        self.metrics.redis_resets.add(1)
        if not report.lost_streams:
            log.warning(
                "redis restarted (run id %s -> %s); every stream this relay wrote kept its entries",
                report.old_run_id,
                report.new_run_id,
            )
            return
        self.redis_reset = (
            f"redis restarted (run id {report.old_run_id} -> {report.new_run_id}) and lost "
            f"streams {', '.join(report.lost_streams)}: events published before the restart "
            "may be gone; republish them with `conveyor relay replay --schema S --since TIME` "
            "(TIME: before the last event the consumers applied)"
        )
        log.error("REDIS DATA LOSS: %s", self.redis_reset)

    async def _measure_backlog(self) -> None:
        for schema, forwarder in self.forwarders.items():
            try:
                self.metrics.backlog[schema] = await forwarder.store.backlog()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._postgres_down(exc)
                return
        self._postgres_up = self.metrics.dependency_up["postgres"] = True
        self._postgres_outage.answered()

    def _postgres_down(self, exc: BaseException) -> None:
        self._postgres_up = self.metrics.dependency_up["postgres"] = False
        self._postgres_outage.failed(exc)

    async def _clean(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            for schema, forwarder in self.forwarders.items():
                try:
                    while (
                        await forwarder.store.clean_up(s.retention, s.cleanup_batch)
                        == s.cleanup_batch
                    ):
                        pass
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    if unanswered(exc):  # the outage line says it
                        self._postgres_down(exc)
                        log.debug(
                            "outbox cleanup failed: schema=%s error=%s", schema, describe(exc)
                        )
                        continue
                    log.warning(
                        "outbox cleanup failed, will retry: schema=%s error=%r", schema, exc
                    )
            await pause(self._stopping, s.cleanup_interval)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Connections go back to the pool as they are: the relay sets no session state, and
    asyncpg's default reset would cost a round trip per claim."""
