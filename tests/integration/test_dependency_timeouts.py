"""A relay and a consumer whose link to Redis or PostgreSQL goes silent (a blackhole, a half-open
peer: nothing answers, nothing is reset, the kernel still acknowledges) notice it within their
dependency timeout, say so through health, and carry on after the link heals: nothing lost,
nothing applied twice. (tests/torture/test_network_faults.py runs every fault on every link
under load; these show each process's part on its own.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from admin import migrations
from admin.catalog import ConsumerCatalog, RelayRegistry
from admin.ops.auth import AuthSettings
from admin.ops.probes import ConsumerProbe, RelayProbe
from admin.ops.runtime import OpsPlane, OpsSettings, Pipeline
from admin.ops.server import ServerSettings
from admin.ops.status import Probe, RedisStatus
from consumers import Consumer, ConsumerSettings, EventContext
from conveyor import redis_client, wire
from conveyor.deadlines import NoReply, pool_options
from relay import Relay, RelaySettings
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    insert_effect,
    publish,
    router_of,
)
from tests.integration.relay_support import drained, fill, stream_ids
from tests.processes import wait_until
from tests.torture.faultproxy import FaultProxy

pytestmark = pytest.mark.slow

TIMEOUT = 1.5
"""The processes' dependency timeout in these tests."""
NOTICED = 20.0
"""Seconds allowed to notice an outage: a few timeouts, on a loaded two-core machine."""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@asynccontextmanager
async def serving(
    pipeline: Pipeline, probe: Probe, *, database_url: str, redis_url: str, prefix: str
) -> AsyncIterator[int]:
    """`pipeline` started and running beside its ops plane (connected as the pipeline is, so
    through the same faults); yields the plane's gRPC port."""
    await asyncio.to_thread(migrations.upgrade_catalog, database_url)
    settings = OpsSettings(
        server=ServerSettings(grpc_addr="127.0.0.1:0"),
        auth=AuthSettings(allow_unauthenticated=True),
        stall_timeout=60,
    )
    plane = OpsPlane(
        settings,
        database_url=database_url,
        redis_url=redis_url,
        key_prefix=prefix,
        probe=probe,
        dependency_timeout=TIMEOUT,
    )
    port = await plane.start()
    try:
        await pipeline.start(f"127.0.0.1:{port}")
        task = asyncio.create_task(pipeline.run())
        try:
            yield port
        finally:
            pipeline.stop()
            await asyncio.wait_for(task, 30)
    finally:
        try:
            await asyncio.wait_for(pipeline.close(), 30)
        finally:
            await asyncio.wait_for(plane.close(), 30)


async def health(port: int) -> int:
    """The process's overall health, as a readiness probe asks it."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    return int(reply.status)


def reasons_of(probe: Probe, *, redis_up: bool = True) -> str:
    """Every reason the probe gives now, as one text (with Redis up or down as given)."""
    components = probe.components(RedisStatus(up=redis_up), [], asyncio.get_running_loop().time())
    return "; ".join(r for c in components for r in c.reasons)


async def until(check: Callable[[], bool], what: str, timeout: float = NOTICED) -> None:
    async def met() -> bool:
        return check()

    await wait_until(met, timeout=timeout, interval=0.1, what=what)


async def until_health(port: int, want: int, what: str, timeout: float = NOTICED) -> None:
    async def met() -> bool:
        return await health(port) == want

    await wait_until(met, timeout=timeout, interval=0.2, what=what)


def relay(case: Case, **overrides: Any) -> Relay:
    settings = RelaySettings(
        **case.relay_settings(
            dependency_timeout=TIMEOUT, backoff_max=0.5, poll_interval=0.2, **overrides
        )
    )
    return Relay(settings, registry=RelayRegistry)


def consumer(case: Case, **overrides: Any) -> Consumer:
    router = effect_router(case.schema)
    settings = consumer_settings(
        case, topics=router.topics, dependency_timeout=TIMEOUT, db_backoff_max=0.5, **overrides
    )
    return Consumer(router, ConsumerSettings(**settings), catalog=ConsumerCatalog)


async def test_a_relay_notices_a_silent_redis_and_publishes_everything_after(
    case: Case,
) -> None:
    proxy = FaultProxy.for_url(case.redis_url)
    try:
        r = relay(case, redis_url=proxy.url(case.redis_url))
        probe = RelayProbe(r, stall_timeout=60)
        urls = {"database_url": case.database_url, "redis_url": proxy.url(case.redis_url)}
        async with serving(r, probe, prefix=case.prefix, **urls) as port:
            before = await fill(case.pg, case.schema, 50)
            await wait_until(lambda: drained(case.pg, case.schema), what="published")
            await until_health(port, SERVING, "serving")
            proxy.half_open()  # silent: nothing answered, nothing reset
            during = await fill(case.pg, case.schema, 50)
            forwarder = r.forwarders[case.schema]
            await until(
                lambda: "redis sent no reply" in (forwarder.last_error or ""),
                "the XADDs to time out",
            )
            await until_health(port, NOT_SERVING, "NOT_SERVING")
            assert "redis" in reasons_of(probe, redis_up=False)
            proxy.heal()
            await wait_until(lambda: drained(case.pg, case.schema), what="published after heal")
            await until_health(port, SERVING, "serving again")
            assert forwarder.last_error is None
        published = await stream_ids(case.redis, case.prefix)
        assert set(published) == set(before + during)  # every event; a retry may repeat one
    finally:
        proxy.close()


async def test_a_relay_notices_a_silent_postgres_and_drains_the_outbox_after(
    case: Case,
) -> None:
    proxy = FaultProxy.for_url(case.database_url)
    try:
        r = relay(case, database_url=proxy.url(case.database_url))
        probe = RelayProbe(r, stall_timeout=60)
        urls = {"database_url": proxy.url(case.database_url), "redis_url": case.redis_url}
        async with serving(r, probe, prefix=case.prefix, **urls) as port:
            before = await fill(case.pg, case.schema, 50)
            await wait_until(lambda: drained(case.pg, case.schema), what="published")
            await until_health(port, SERVING, "serving")
            proxy.blackhole()  # silent: nothing answered, nothing reset
            during = await fill(case.pg, case.schema, 50)  # written directly, not through it
            await until(lambda: r.status().postgres_up is False, "postgres reported unreachable")
            await until_health(port, NOT_SERVING, "NOT_SERVING")
            assert "postgres unreachable" in reasons_of(probe)
            await asyncio.sleep(TIMEOUT)  # the claims in flight time out too
            proxy.heal()
            await wait_until(lambda: drained(case.pg, case.schema), what="published after heal")
            await until_health(port, SERVING, "serving again")
        published = await stream_ids(case.redis, case.prefix)
        assert set(published) == set(before + during)
    finally:
        proxy.close()


async def test_a_consumer_notices_a_silent_redis_and_applies_everything_once_after(
    case: Case,
) -> None:
    await create_effects(case.pg, case.schema)
    proxy = FaultProxy.for_url(case.redis_url)
    try:
        c = consumer(case, redis_url=proxy.url(case.redis_url))
        probe = ConsumerProbe(c, stall_timeout=60)
        urls = {"database_url": case.database_url, "redis_url": proxy.url(case.redis_url)}
        async with serving(c, probe, prefix=case.prefix, **urls) as port:
            before = await publish(case.redis, case.prefix, 50)
            await wait_until(lambda: applied(case, 50), what="applied")
            await until_health(port, SERVING, "serving")
            proxy.blackhole()  # silent: nothing answered, nothing reset
            during = await publish(case.redis, case.prefix, 50)  # written directly
            worker = c.workers["identity"]
            await until(lambda: "redis sent no reply" in worker.health.reason, "reads to time out")
            await until_health(port, NOT_SERVING, "NOT_SERVING")
            proxy.heal()
            await wait_until(lambda: applied(case, 100), what="applied after heal")
            await until_health(port, SERVING, "serving again")
        counts = await effect_counts(case.pg, case.schema, "g")
        assert set(counts) == set(before + during) and set(counts.values()) == {1}
        pending = await case.redis.xpending(wire.Keys("identity", case.prefix).events, "g")
        assert pending["pending"] == 0
    finally:
        proxy.close()


async def test_a_consumer_notices_a_silent_postgres_and_applies_everything_once_after(
    case: Case,
) -> None:
    await create_effects(case.pg, case.schema)
    proxy = FaultProxy.for_url(case.database_url)
    try:
        c = consumer(case, database_url=proxy.url(case.database_url))
        probe = ConsumerProbe(c, stall_timeout=60)
        urls = {"database_url": proxy.url(case.database_url), "redis_url": case.redis_url}
        async with serving(c, probe, prefix=case.prefix, **urls) as port:
            before = await publish(case.redis, case.prefix, 50)
            await wait_until(lambda: applied(case, 50), what="applied")
            await until_health(port, SERVING, "serving")
            proxy.half_open()  # silent: nothing answered, nothing reset
            during = await publish(case.redis, case.prefix, 50)
            await until(lambda: not c.status().postgres_up, "postgres reported unreachable")
            await until_health(port, NOT_SERVING, "NOT_SERVING")
            assert "postgres unreachable" in reasons_of(probe)
            proxy.heal()
            await wait_until(lambda: applied(case, 100), what="applied after heal")
            await until_health(port, SERVING, "serving again")
        counts = await effect_counts(case.pg, case.schema, "g")
        assert set(counts) == set(before + during) and set(counts.values()) == {1}
    finally:
        proxy.close()


async def test_a_lane_waiting_under_a_handler_on_a_silent_postgres_is_reported(
    case: Case,
) -> None:
    await create_effects(case.pg, case.schema)

    async def slow(event: object, ctx: EventContext) -> None:
        await ctx.db.execute("SELECT pg_sleep(0.2)")  # most of a batch's time is the handler's
        await insert_effect(ctx, case.schema)

    proxy = FaultProxy.for_url(case.database_url)
    try:
        # A heartbeat every 30 s: only a beat made because a lane waits long tells in time.
        settings = consumer_settings(
            case,
            database_url=proxy.url(case.database_url),
            topics=("identity",),
            dependency_timeout=TIMEOUT,
            db_backoff_max=0.5,
            heartbeat_interval=30,
            partitions=1,
        )
        c = Consumer(router_of(slow), ConsumerSettings(**settings), catalog=ConsumerCatalog)
        urls = {"database_url": proxy.url(case.database_url), "redis_url": case.redis_url}
        async with serving(c, ConsumerProbe(c, 60), prefix=case.prefix, **urls):
            ids = await publish(case.redis, case.prefix, 5)
            await wait_until(lambda: applied(case, 5), what="applied")
            ids += await publish(case.redis, case.prefix, 30)  # one batch: 6 s of handlers
            await asyncio.sleep(1)
            proxy.blackhole()
            await until(lambda: not c.status().postgres_up, "postgres reported unreachable")
            proxy.heal()
            await wait_until(lambda: applied(case, 35), timeout=60, what="applied after heal")
        counts = await effect_counts(case.pg, case.schema, "g")
        assert set(counts) == set(ids) and set(counts.values()) == {1}
    finally:
        proxy.close()


async def applied(case: Case, n: int) -> bool:
    return len(await effect_counts(case.pg, case.schema, "g")) == n


async def test_a_redis_reply_that_comes_too_late_is_never_read_as_another(
    redis_url: str, key_prefix: str
) -> None:
    key = f"{key_prefix}late"
    with FaultProxy.for_url(redis_url) as proxy:
        client = redis_client.connect(proxy.url(redis_url), timeout=TIMEOUT)
        try:
            await client.set(key, 0)
            proxy.latency(1.0, direction="to_client")
            with pytest.raises(NoReply, match=r"redis sent no reply to INCR within 0\.3s"):
                await redis_client.within(0.3, client.incr(key), "INCR")
            proxy.latency(0)
            assert await client.incr(key) == 2  # not the first INCR's late "1"
            assert await client.get(key) == b"2"
        finally:
            await client.delete(key)
            await client.aclose()


async def test_a_postgres_reply_that_comes_too_late_is_never_read_as_another(
    database_url: str,
) -> None:
    with FaultProxy.for_url(database_url) as proxy:
        pool = await asyncpg.create_pool(
            proxy.url(database_url), min_size=1, max_size=1, **pool_options(0.5)
        )
        try:
            assert await pool.fetchval("SELECT 1") == 1
            proxy.latency(1.0, direction="to_client")
            started = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError):
                await pool.fetchval("SELECT 'late'")
            # The statement's bound, then at most as long for the cancel (which cannot get
            # through in time either) before the connection is closed and given back.
            assert asyncio.get_running_loop().time() - started < 3
            proxy.latency(0)
            assert await pool.fetchval("SELECT 'next'") == "next"
        finally:
            await asyncio.wait_for(pool.close(), 10)
