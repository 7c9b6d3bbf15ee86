"""The ops plane of a running relay or consumer: gRPC server, health, status, AdminService."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import asyncpg
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from admin.catalog import Catalog
from admin.catalog.audit import AuditLog
from admin.errors import AddressUnavailable, DependencyUnavailable, OpsPlaneUnavailable
from admin.ops import process
from admin.ops.auth import AuthInterceptor
from admin.ops.health import Health
from admin.ops.loop_watch import LoopWatch
from admin.ops.server import OpsServer, advertised_address
from admin.ops.servicer import AdminContext, AdminServicer
from admin.ops.settings import OpsSettings
from admin.ops.status import (
    Probe,
    StatusChecker,
)
from admin.ops.status_metrics import StatusGauges
from admin.ops.tokens import TokenStore, install_sighup_reload
from conveyor import database, redis_client
from conveyor.deadlines import DEPENDENCY_TIMEOUT, pool_options
from conveyor.urls import redact

log = logging.getLogger(__name__)
R = TypeVar("R")


def page_token_key(settings: OpsSettings, database_url: str) -> bytes:
    """The key signing list page tokens: the configured one, else one derived from the database
    URL, so every process of one deployment accepts the others' tokens."""
    if settings.page_token_key:
        return settings.page_token_key
    return hashlib.sha256(b"conveyor page tokens\0" + database_url.encode()).digest()


_BEAT = 0.5
"""How often the pipeline's event loop marks itself alive for the ops thread."""

SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (CPython's default is 5 ms):
the ops thread waits at most this long for the pipeline's thread to let it answer a call."""

OPS_POOL_SIZE = 6
"""PostgreSQL connections of the ops thread: status, catalog queries, audit, reprocessing."""

SERVER_GRACE = 5.0
"""Seconds calls in progress (a reprocess stream, say) get to finish when the process stops."""

CLOSE_TIMEOUT = 15.0
"""Seconds closing the ops plane may take before the process exits without it."""


@dataclass
class _OpsState:
    """What lives on the ops thread's event loop."""

    pool: asyncpg.Pool
    redis: Any
    health: Health
    audit: AuditLog
    checker: StatusChecker
    server: OpsServer
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class OpsPlane:
    """Health, status and AdminService of a relay or consumer, served from a thread of its own.

    The gRPC server, the status checker, and the PostgreSQL pool and Redis client the servicer
    uses all live on the ops thread's event loop, so health and admin calls do not queue behind
    the batches the pipeline's loop is decoding and applying. The probe reads the pipeline's
    state; the pipeline's loop beats every half second, and a loop that stops beating makes
    every component NOT_SERVING (and liveness too, after the stall timeout).

    `await plane.start()`; on SIGTERM `plane.begin_shutdown()` first (every status flips to
    NOT_SERVING), then stop the pipeline, then `await plane.close()`.
    """

    def __init__(
        self,
        settings: OpsSettings,
        *,
        database_url: str,
        redis_url: str,
        key_prefix: str,
        probe: Probe,
        schemas: Sequence[str] = (),
        metrics: InMemoryMetricReader | None = None,
        gauges: StatusGauges | None = None,
        name: str = "",  # the process's, in its connections' `conveyor ops <name>`
        dependency_timeout: float = DEPENDENCY_TIMEOUT,
    ) -> None:
        self.settings = settings
        self._named = database.server_settings(database_url, "ops", name)
        self._timeout = dependency_timeout  # of the ops thread's statements and connects
        self._database_url = database_url
        self._redis_url = redis_url
        self._prefix = key_prefix
        self._probe = probe
        self._schemas = tuple(schemas)
        self._metrics = metrics
        self._gauges = gauges
        # Loaded here, so a bad tokens file fails the start with its message.
        tokens = settings.auth.tokens_file
        self._store = TokenStore.load(tokens) if tokens is not None else None
        self.beat = time.monotonic()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._beater: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Future[None] | None = None
        self._ops: _OpsState | None = None

    async def start(self) -> int:
        """Start the ops thread and serve; returns the port."""
        ready: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name="conveyor-ops", daemon=True
        )
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._thread.start()
        self._loop = await asyncio.wrap_future(ready)
        self._beater = asyncio.create_task(self._beat(), name="ops-beat")
        if self._store is not None:  # from now on, so no edit of the file is missed
            install_sighup_reload(asyncio.get_running_loop(), self._store)
        try:
            self.port = await self._call(self._setup())
        except BaseException:
            await self.close()
            raise
        return self.port

    def begin_shutdown(self) -> None:
        """From a signal handler: start flipping every status to NOT_SERVING now."""
        if self._shutdown is None and self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._shut_down(), self._loop)
            self._shutdown = asyncio.wrap_future(future)

    async def shutting_down(self) -> None:
        """Flip every status to NOT_SERVING and stop refreshing them."""
        self.begin_shutdown()
        if self._shutdown is not None:
            await self._shutdown

    async def close(self) -> None:
        """Stop serving, close the ops thread's connections and end the thread."""
        if self._beater is not None:
            self._beater.cancel()
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            await self.shutting_down()
        finally:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._call(self._teardown())
            except TimeoutError:
                log.warning("the ops plane did not close within %.0fs; leaving it", CLOSE_TIMEOUT)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                await asyncio.to_thread(thread.join, CLOSE_TIMEOUT)
                self._loop = None

    # -- on the pipeline's loop -----------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(_BEAT)

    async def _call(self, coroutine: Coroutine[Any, Any, R]) -> R:
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    # -- on the ops thread ----------------------------------------------------------------------

    @staticmethod
    def _run_loop(ready: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        ready.set_result(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _setup(self) -> int:
        try:
            options = {"server_settings": self._named, **pool_options(self._timeout)}
            pool = await asyncpg.create_pool(
                self._database_url, min_size=1, max_size=OPS_POOL_SIZE, **options
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            answered = isinstance(exc, asyncpg.PostgresError)
            raise DependencyUnavailable(
                name="PostgreSQL",
                address=redact(self._database_url),
                cause=exc,
                waited=None if answered else 0,
            ) from exc
        try:
            return await self._serve(pool)
        except BaseException:
            if self._ops is None:  # _teardown closes it otherwise
                await pool.close()
            raise

    async def _serve(self, pool: asyncpg.Pool) -> int:
        redis = await redis_client.open(self._redis_url, timeout=self._timeout)
        health = Health(liveness_limit=self.settings.stall_timeout, beat=lambda: self.beat)
        catalog = Catalog(pool, self._prefix)
        audit = catalog.audit
        watch = LoopWatch(self._probe, lambda: self.beat, self.settings.stall_timeout)
        checker = StatusChecker(redis=redis, catalog=catalog, probe=watch, on_change=health.publish)
        if self._gauges is not None:
            self._gauges.watch(lambda: checker.snapshot)
        context = AdminContext(
            catalog=catalog,
            redis=redis,
            token_key=page_token_key(self.settings, self._database_url),
            snapshot=lambda: checker.snapshot,
            metrics=self._metrics,
            own_schemas=tuple(self._schemas),
            payload_types=self.settings.payload_types,
        )
        server = OpsServer(
            self.settings.server,
            health_servicer=health.servicer,
            admin_servicer=AdminServicer(context),
            interceptors=[AuthInterceptor(self.settings.auth, audit, self._store)],
        )
        ops = self._ops = _OpsState(pool, redis, health, audit, checker, server)
        await health.start()
        port = await server.start()
        await checker.try_refresh()  # the first one: what it logs comes before "started"
        ops.task = asyncio.create_task(checker.run(ops.stopping), name="status-checker")
        return port

    async def _shut_down(self) -> None:
        ops = self._ops
        if ops is None:
            return
        ops.stopping.set()
        if ops.task is not None:  # a refresh may be waiting on a dependency: do not wait for it
            ops.task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await ops.task
        await ops.health.shut_down()

    async def _teardown(self) -> None:
        ops = self._ops
        if ops is None:
            return
        try:
            await ops.server.stop(SERVER_GRACE)  # cancels calls still running after the grace
        finally:
            ops.audit.close()
            await ops.redis.aclose()
            await ops.pool.close()


class Pipeline(Protocol):
    """What a relay or consumer offers the runtime: `Relay` and `Consumer` both are one."""

    async def start(self, grpc_addr: str | None = None) -> None:
        """Connect, and create what the pipeline needs (consumer groups, its registry row, which
        records `grpc_addr`, where its ops plane answers)."""

    def stop(self) -> None:
        """Begin a graceful stop: what is in flight finishes, then `run()` returns."""

    async def run(self) -> None:
        """Work until stopped."""

    async def close(self) -> None:
        """Release connections."""


async def serve(
    plane: OpsPlane, pipeline: Pipeline, *, started: Callable[[], None] = lambda: None
) -> None:
    """Start `plane`, then `pipeline`, run it until SIGTERM/SIGINT, then close both;
    OpsPlaneUnavailable (AddressUnavailable for the gRPC address) when the plane cannot start,
    DependencyUnavailable when its PostgreSQL pool cannot connect.

    The plane binds its gRPC address before the pipeline creates anything, so a taken address
    leaves no consumer group or catalog entry behind. `started()` runs once both are up. On a
    signal, health goes NOT_SERVING first (so probes and load balancers see it before the
    pipeline stops), then `pipeline.stop()` lets the pipeline finish what is in flight. A stop
    asked for before (admin.ops.process.stop_requested) or while the plane starts keeps the
    pipeline from starting at all.
    """
    stopping = asyncio.Event()

    def on_signal() -> None:
        stopping.set()
        plane.begin_shutdown()
        pipeline.stop()

    loop = asyncio.get_running_loop()
    for sig in process.STOP_SIGNALS:  # a stop asked for during the start is kept
        loop.add_signal_handler(sig, on_signal)
    asked = process.stop_requested()  # before this process's loop took the signals
    if asked is not None:
        on_signal()
    try:
        if not await _unless_stopped(_start(plane), stopping):
            log.info("stopped by %s while starting", asked or "a signal")
            return
        try:
            address = advertised_address(plane.settings.server.grpc_addr, plane.port)
            if not await _unless_stopped(pipeline.start(address), stopping):
                log.info("stopped by %s while starting", asked or "a signal")
            else:
                started()
                await pipeline.run()
        finally:
            await plane.close()
    finally:
        await pipeline.close()


async def _unless_stopped(starting: Coroutine[Any, Any, None], stopping: asyncio.Event) -> bool:
    """Run `starting` unless or until a stop is asked for (a start waiting on a server that
    stopped answering would otherwise hold a SIGTERM for its connect timeout); False when the
    stop came first and `starting` was cancelled."""
    if stopping.is_set():
        starting.close()
        return False
    task = asyncio.ensure_future(starting)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        task.result()  # its failure, if it failed
        return True
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    return False


async def _start(plane: OpsPlane) -> None:
    addr = plane.settings.server.grpc_addr
    try:
        await plane.start()
    except RuntimeError as exc:  # grpc's bind failure, when the address was taken after the check
        reason = "address already in use"
        raise AddressUnavailable(address=addr, reason=reason, in_use=True) from exc
    except OSError as exc:  # a TLS file that went away since the checks, say
        raise OpsPlaneUnavailable(
            f"the ops plane cannot start: {type(exc).__name__}: {exc}"
        ) from exc
