"""The lag and dependency gauges a scrape serves, read from the ops plane's status snapshot
(admin/ops/status.py + admin/ops/status_metrics.py), against the real PostgreSQL and Redis —
through loopback proxies where a dependency has to go away."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.engine import make_url

from admin.catalog import Catalog
from admin.catalog.registry import register
from admin.ops.convert import status_response
from admin.ops.status import (
    ComponentStatus,
    GroupStatus,
    OutboxStatus,
    RedisStatus,
    Snapshot,
    State,
    StatusChecker,
)
from admin.ops.status_metrics import StatusGauges
from consumers.catalog import Member
from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.metrics_support import value
from tests.integration.proxies import Proxy

GROUP = "lag-gauges"
TOPIC = "orders"


class _Probe:
    """A process with one healthy component: only the snapshot's groups and Redis matter."""

    def components(
        self, redis: RedisStatus, groups: Sequence[GroupStatus], now: float
    ) -> list[ComponentStatus]:
        return [ComponentStatus("conveyor.consumer.orders", "SERVING")]

    def outboxes(self) -> list[OutboxStatus]:
        return []


@dataclass
class Served:
    """A consumer's StatusGauges over a StatusChecker, served as Prometheus text."""

    checker: StatusChecker
    registry: CollectorRegistry
    stream: str

    def scrape(self) -> str:
        return generate_latest(self.registry).decode()

    def lag_entries(self) -> float | None:
        return value(self.scrape(), "consumer_lag_entries", stream=self.stream, group=GROUP)

    def lag_seconds(self) -> float | None:
        return value(self.scrape(), "consumer_lag_seconds", stream=self.stream, group=GROUP)

    def dependency(self, name: str) -> float | None:
        return value(self.scrape(), "dependency_up", dependency=name)


def status_gauges(
    prefix: str, group: str = GROUP
) -> tuple[StatusGauges, CollectorRegistry, MeterProvider]:
    """A consumer's StatusGauges on a MeterProvider of their own, read by a Prometheus reader."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    gauges = StatusGauges(
        role="consumer",
        key_prefix=prefix,
        group=group,
        dependencies=True,
        meter=provider.get_meter("test_status_gauges"),
    )
    return gauges, registry, provider


def _member(prefix: str) -> Member:
    return Member(prefix, GROUP, "c-1", (TOPIC,), "at-least-once", None, "host", 1, None)


def _via(url: str, port: int) -> str:
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


@pytest.fixture(name="registered")
async def fixture_registered(case: Case, catalog_cleanup: None) -> AsyncIterator[str]:
    """The group registered in the catalog (one at-least-once member); yields its stream."""
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        await register(pool, _member(case.prefix))
    finally:
        await pool.close()
    stream = wire.Keys(TOPIC, case.prefix).events
    try:
        yield stream
    finally:
        await case.redis.delete(stream)


async def test_a_lost_group_reports_its_whole_stream_as_lag(case: Case, registered: str) -> None:
    """Redis lost the group (restart without persistence, `XGROUP DESTROY`): an at-least-once
    group stops for good and nothing reads the stream. The stream holds 5 entries the group never
    read: the gauges serve them as its lag, as old as the stream's first entry (not lag 0, which
    ConveyorConsumerLagHigh could never fire on), and `conveyor status` (GetStatus) shows the
    same."""
    for i in range(5):
        await case.redis.xadd(registered, {"n": str(i)}, id=f"{1_000 + i}-0")
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    gauges, registry, provider = status_gauges(case.prefix)
    try:
        checker = StatusChecker(
            redis=case.redis, catalog=Catalog(pool, case.prefix), probe=_Probe()
        )
        gauges.watch(lambda: checker.snapshot)
        await checker.refresh()
        served = Served(checker, registry, registered)
        entries, seconds = served.lag_entries(), served.lag_seconds()
    finally:
        provider.shutdown()
        await pool.close()
    assert entries == 5, f"lag_entries={entries} for 5 unread entries"
    assert seconds is not None and seconds > 60, f"lag_seconds={seconds} for entries of 1970"
    (shown,) = status_response(checker.snapshot).groups
    assert (shown.group, shown.lag_entries, shown.pending) == (GROUP, 5, 0)
    assert shown.lag_seconds == pytest.approx(seconds, abs=5)


@pytest.fixture(name="proxied")
async def fixture_proxied(
    case: Case, registered: str
) -> AsyncIterator[tuple[Served, Proxy, Proxy]]:
    """The gauges over a checker whose PostgreSQL and Redis go through proxies of their own."""
    pg_proxy = Proxy(make_url(case.database_url).port or 5432)
    redis_proxy = Proxy(make_url(case.redis_url).port or 6379)
    pool = await asyncpg.create_pool(
        _via(case.database_url, pg_proxy.port), min_size=0, max_size=2, timeout=2
    )
    client: Any = aioredis.Redis.from_url(
        _via(case.redis_url, redis_proxy.port), socket_timeout=1, socket_connect_timeout=1
    )
    gauges, registry, provider = status_gauges(case.prefix)
    checker = StatusChecker(redis=client, catalog=Catalog(pool, case.prefix), probe=_Probe())
    gauges.watch(lambda: checker.snapshot)
    try:
        yield Served(checker, registry, registered), pg_proxy, redis_proxy
    finally:
        provider.shutdown()
        pg_proxy.close()
        redis_proxy.close()
        await client.aclose()
        pool.terminate()


async def test_postgres_gauge_follows_postgres_while_redis_is_also_down(
    proxied: tuple[Served, Proxy, Proxy],
) -> None:
    """The consumer's host loses both dependencies (a network partition): dependency_up goes to
    0 for each, and PostgreSQL's goes back to 1 when it comes back while Redis is still away
    (the registry is read whether or not Redis answers)."""
    served, pg_proxy, redis_proxy = proxied
    await served.checker.refresh()
    assert served.dependency("redis") == 1
    assert served.dependency("postgres") == 1
    pg_proxy.cut()
    redis_proxy.cut()
    for _ in range(3):
        await served.checker.refresh()
    assert served.dependency("redis") == 0
    assert served.dependency("postgres") == 0, "PostgreSQL is unreachable, the gauge says up"
    pg_proxy.restore()
    await served.checker.refresh()
    assert served.dependency("redis") == 0
    assert served.dependency("postgres") == 1, "PostgreSQL is back, the gauge says down"


async def test_lag_stays_served_while_postgres_is_down(
    case: Case, proxied: tuple[Served, Proxy, Proxy]
) -> None:
    """While PostgreSQL is away nobody can apply events, so lag grows; Redis still answers. The
    registry cannot be read: the groups of its last read are still measured in Redis, so lag
    stays served (ConveyorConsumerLagHigh does not resolve for the outage, the dashboard's lag
    panels do not go blank), and keeps growing."""
    served, pg_proxy, _ = proxied
    await case.redis.xadd(served.stream, {"n": "0"}, id="1000-0")
    await case.redis.xgroup_create(served.stream, GROUP, id="0")
    await served.checker.refresh()
    assert (served.lag_seconds() or 0) > 60
    pg_proxy.cut()
    for _ in range(2):
        await served.checker.refresh()
    assert served.dependency("postgres") == 0
    assert served.lag_seconds() is not None, "consumer_lag_seconds vanished during the outage"
    await case.redis.xadd(served.stream, {"n": "1"}, id="2000-0")
    await served.checker.refresh()
    assert served.lag_entries() == 2, "the lag is measured, not frozen at its last value"


@pytest.mark.parametrize(
    ("state", "serving"), [(None, 0), ("SERVING", 1), ("DEGRADED", 1), ("NOT_SERVING", 0)]
)
def test_serving_follows_readiness_while_up_stays_1(state: State | None, serving: int) -> None:
    """conveyor_serving is the process's readiness (0 before the first snapshot, as health);
    conveyor_up says only that the process runs."""
    gauges, registry, provider = status_gauges("conveyor")
    components = () if state is None else (ComponentStatus("conveyor.consumer.orders", state),)
    gauges.watch(lambda: Snapshot(components=components))
    try:
        text = generate_latest(registry).decode()
    finally:
        provider.shutdown()
    assert value(text, "conveyor_serving", role="consumer", group=GROUP) == serving
    assert value(text, "conveyor_up", role="consumer", group=GROUP) == 1


class _AckedBetween:
    """The real Redis client, except that the group's pending entries are acknowledged right
    after XINFO GROUPS answered: a member that settled its batch between the two reads."""

    def __init__(self, redis: Any, stream: str) -> None:
        self._redis = redis
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def xinfo_groups(self, key: str) -> Any:
        groups = await self._redis.xinfo_groups(key)
        pending = await self._redis.xpending_range(key, GROUP, min="-", max="+", count=100)
        await self._redis.xack(key, GROUP, *[p["message_id"] for p in pending])
        return groups


async def test_entries_acknowledged_while_status_reads_the_group_are_no_error(
    case: Case, registered: str
) -> None:
    """XINFO GROUPS counts pending entries that are acknowledged before XPENDING asks for their
    oldest (the member settled its batch meanwhile): the status still serves the group's lag
    instead of failing its refresh."""
    for i in range(3):
        await case.redis.xadd(registered, {"n": str(i)})
    await case.redis.xgroup_create(registered, GROUP, id="0")
    await case.redis.xreadgroup(GROUP, "c-1", {registered: ">"}, count=2)
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        checker = StatusChecker(
            redis=_AckedBetween(case.redis, registered),
            catalog=Catalog(pool, case.prefix),
            probe=_Probe(),
        )
        snapshot = await checker.refresh()
    finally:
        await pool.close()
    [group] = [g for g in snapshot.groups if g.group == GROUP]
    assert group.lag_entries == 1, group
    assert await case.redis.xpending(registered, GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
