"""The ops plane's own thread: it keeps reporting through a failing probe, a shutdown turns
health NOT_SERVING at once even while a status refresh is stuck on PostgreSQL, and its first
refresh (which logs a Redis policy that can evict streams) is done when the plane has started."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from admin import migrations
from admin.ops.auth import AuthSettings
from admin.ops.runtime import OPS_POOL_SIZE, OpsPlane, OpsSettings
from admin.ops.server import ServerSettings
from admin.ops.status import ComponentStatus, GroupStatus, OutboxStatus, RedisStatus
from tests.processes import wait_until
from tests.servers import RedisServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FlakyProbe:
    """One component; every second call raises, as a bug in a probe would."""

    def __init__(self) -> None:
        self.calls = 0

    def components(
        self, redis: RedisStatus, groups: Sequence[GroupStatus], now: float
    ) -> list[ComponentStatus]:
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("probe bug")
        return [ComponentStatus("conveyor.test.component", "SERVING")]

    def outboxes(self) -> list[OutboxStatus]:
        return []


@asynccontextmanager
async def running_plane(
    database_url: str, redis_url: str, key_prefix: str, probe: FlakyProbe
) -> AsyncIterator[tuple[OpsPlane, int]]:
    await asyncio.to_thread(migrations.upgrade_catalog, database_url)
    settings = OpsSettings(
        server=ServerSettings(grpc_addr="127.0.0.1:0"),
        auth=AuthSettings(allow_unauthenticated=True),
    )
    plane = OpsPlane(
        settings, database_url=database_url, redis_url=redis_url, key_prefix=key_prefix, probe=probe
    )
    port = await plane.start()
    try:
        yield plane, port
    finally:
        await asyncio.wait_for(plane.close(), timeout=30)


async def status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(reply.status)


async def test_a_failing_probe_does_not_freeze_health(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    probe = FlakyProbe()
    async with running_plane(database_url, redis_url, key_prefix, probe) as (plane, port):

        async def refreshed_past_failures() -> bool:
            return probe.calls >= 5

        await wait_until(refreshed_past_failures, timeout=15, what="refreshes after a failure")
        assert await status(port) == SERVING
        assert await status(port, "conveyor.test.component") == SERVING
        assert await status(port, "conveyor.liveness") == SERVING
    assert plane._thread is not None and not plane._thread.is_alive()


async def test_shutdown_flips_health_at_once_while_a_refresh_waits_on_postgres(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    probe = FlakyProbe()
    async with running_plane(database_url, redis_url, key_prefix, probe) as (plane, port):
        await wait_until(lambda: _is(port, SERVING), timeout=15, what="serving")
        ops = plane._ops
        assert ops is not None

        async def hold_every_connection() -> list[object]:
            return [await ops.pool.acquire() for _ in range(OPS_POOL_SIZE)]

        held = await plane._call(hold_every_connection())  # the next refresh waits for one
        await asyncio.sleep(1.5)
        started = asyncio.get_running_loop().time()
        plane.begin_shutdown()
        await wait_until(lambda: _is(port, NOT_SERVING), timeout=5, what="NOT_SERVING")
        assert asyncio.get_running_loop().time() - started < 1.0
        assert await status(port, "conveyor.liveness") == NOT_SERVING

        async def release() -> None:
            for conn in held:
                await ops.pool.release(conn)

        await plane._call(release())


async def _is(port: int, want: int) -> bool:
    return await status(port) == want


@pytest.mark.slow
async def test_an_evicting_policy_is_logged_before_the_plane_has_started(
    database_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The process says it started only after its plane started: the line about the policy
    must be out by then, not left to the first refresh of the plane's thread racing on."""
    caplog.set_level(logging.ERROR, logger="admin.ops.status")
    with RedisServer(config=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")) as s:
        async with running_plane(database_url, s.url, key_prefix, FlakyProbe()):
            logged = [r.getMessage() for r in caplog.records]
    assert any("redis misconfigured: maxmemory-policy allkeys-lru" in m for m in logged), logged
