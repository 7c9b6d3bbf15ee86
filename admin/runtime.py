"""The ops plane of a running relay or consumer: gRPC server, health, status, AdminService."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from admin.audit import AuditLog
from admin.auth import AuthInterceptor, AuthSettings, install_sighup_reload
from admin.health import Health
from admin.options import fail
from admin.server import OpsServer, ServerSettings
from admin.servicer import AdminContext, AdminServicer
from admin.status import Probe, StatusChecker
from conveyor import database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpsSettings:
    """How the ops plane of a process runs."""

    server: ServerSettings
    auth: AuthSettings = field(default_factory=AuthSettings)
    stall_timeout: float = 60.0
    """Work waiting and nothing done for this long makes a component NOT_SERVING."""
    page_token_key: bytes | None = None
    """Signs list page tokens; by default derived from the database URL, so every process of
    one deployment accepts the others' tokens (CONVEYOR_PAGE_TOKEN_KEY overrides)."""

    def __post_init__(self) -> None:
        if not self.stall_timeout > 0:
            raise ValueError(f"stall_timeout must be > 0 seconds, got {self.stall_timeout!r}")


def page_token_key(settings: OpsSettings, database_url: str) -> bytes:
    configured = os.environ.get("CONVEYOR_PAGE_TOKEN_KEY")
    if settings.page_token_key:
        return settings.page_token_key
    if configured:
        return configured.encode()
    return hashlib.sha256(b"conveyor page tokens\0" + database_url.encode()).digest()


class OpsPlane:
    """Starts health (NOT_SERVING until the first snapshot), the status checker and the server.

    `await plane.start()`; on SIGTERM `await plane.shutting_down()` first (every status flips to
    NOT_SERVING), then stop the pipeline, then `await plane.close()`.
    """

    def __init__(
        self, settings: OpsSettings, *, pool: asyncpg.Pool, redis: Any, key_prefix: str,
        database_url: str, probe: Probe, schemas: Callable[[], Awaitable[Sequence[str]]],
        metrics: InMemoryMetricReader | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.health = Health()
        self.audit = AuditLog(pool)
        self._stopping = asyncio.Event()
        self.checker = StatusChecker(redis=redis, pool=pool, probe=probe, key_prefix=key_prefix,
                                     on_change=self.health.publish)  # fmt: skip
        context = AdminContext(
            pool=pool, redis=redis, key_prefix=key_prefix, audit=self.audit,
            token_key=page_token_key(settings, database_url),
            snapshot=lambda: self.checker.snapshot, metrics=metrics, schemas=schemas,
        )  # fmt: skip
        self.interceptor = AuthInterceptor(settings.auth, self.audit)
        self.server = OpsServer(settings.server, health_servicer=self.health.servicer,
                                admin_servicer=AdminServicer(context),
                                interceptors=[self.interceptor])  # fmt: skip
        self._task: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Serve; returns the port."""
        await self.health.start()
        port = await self.server.start()
        self._task = asyncio.create_task(self.checker.run(self._stopping), name="status-checker")
        if self.interceptor.store is not None:
            install_sighup_reload(asyncio.get_running_loop(), self.interceptor.store)
        return port

    def begin_shutdown(self) -> None:
        """From a signal handler: start flipping every status to NOT_SERVING now."""
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self.shutting_down())

    async def shutting_down(self) -> None:
        """Flip every status to NOT_SERVING and stop refreshing them."""
        self._stopping.set()
        if self._task is not None:
            with suppress(asyncio.CancelledError):
                await self._task
        await self.health.shut_down()

    async def close(self) -> None:
        await self.shutting_down()
        await self.server.stop()
        self.audit.close()


def ops_settings(
    *,
    grpc_addr: str,
    reflection: bool,
    tokens_file: Path | None,
    allow_unauthenticated: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    stall_timeout: float,
) -> OpsSettings:
    """OpsSettings from command-line values; ValueError (or InvalidInput) naming a bad one."""
    return OpsSettings(
        server=ServerSettings(grpc_addr=grpc_addr, reflection=reflection, tls_cert=tls_cert,
                              tls_key=tls_key, tls_client_ca=tls_client_ca),
        auth=AuthSettings(tokens_file=tokens_file, allow_unauthenticated=allow_unauthenticated),
        stall_timeout=stall_timeout,
    )  # fmt: skip


async def registry_schemas(pool: asyncpg.Pool, own: Sequence[str]) -> list[str]:
    """Schemas to look in for an event: `own` plus every registered consumer's ledger schema."""
    rows = await pool.fetch(
        f"SELECT DISTINCT ledger_schema FROM {database.CATALOG_SCHEMA}.{database.CONSUMERS_TABLE} "
        "WHERE ledger_schema IS NOT NULL"
    )
    return sorted({*own, *(r[0] for r in rows)})


async def serve(
    plane: OpsPlane, *, stop: Callable[[], None], run: Callable[[], Awaitable[None]]
) -> None:
    """Start `plane`, run the pipeline until SIGTERM/SIGINT, then close the plane.

    On a signal, health goes NOT_SERVING first (so probes and load balancers see it before the
    pipeline stops), then `stop()` lets the pipeline finish what is in flight.
    """
    try:
        await plane.start()
    except (OSError, RuntimeError) as exc:
        fail(f"cannot serve gRPC on {plane.settings.server.grpc_addr}: {exc}")

    def on_signal() -> None:
        plane.begin_shutdown()
        stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await run()
    finally:
        await plane.close()
