"""Partitioned topics end to end on the real servers: the relay routes each aggregate's events to
one partition stream, in order; a consumer group reads every partition and applies each event
once; plain topics keep their single stream; a relay stops when the partition count changes."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import asyncpg
import pytest

from admin.catalog import Catalog, ConsumerCatalog
from admin.catalog import layouts as catalog_layouts
from admin.catalog.layouts import CatalogLayouts
from admin.ops.probes import ConsumerProbe
from admin.ops.status import StatusChecker
from consumers import Consumer, ConsumerSettings, EventContext
from conveyor import wire
from relay import Relay, RelaySettings
from relay.errors import LayoutChanged
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    running_consumer,
)
from tests.integration.partition_support import (
    PARTITIONS,
    TOPIC,
    enqueue,
    entries,
    partition,
    publish,
)
from tests.integration.relay_support import drained
from tests.processes import wait_until


async def test_the_relay_puts_each_aggregate_in_one_partition_in_commit_order(case: Case) -> None:
    layout = await partition(case.pg, case.prefix)
    sent = await enqueue(case.pg, case.schema, 240, aggregates=37)
    plain = await enqueue(case.pg, case.schema, 10, aggregates=3, topic="identity")
    relay = Relay(RelaySettings(**case.relay_settings()), layouts=CatalogLayouts)
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:
        await wait_until(lambda: drained(case.pg, case.schema), what="the outbox drained")
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
        await relay.close()

    by_partition = {
        keys.partition: await entries(case.redis, keys.events)
        for keys in wire.topic_keys(TOPIC, case.prefix, layout.partitions)
    }
    assert sum(len(found) for found in by_partition.values()) == 240, "each event once"
    assert all(by_partition.values()), "37 aggregates spread over all 4 partitions"
    for p, found in by_partition.items():
        assert {wire.partition_of(agg, PARTITIONS) for agg, _ in found} == {p}
    wanted: dict[str, list[str]] = defaultdict(list)
    for agg, event_id in sent:
        wanted[agg].append(str(event_id))
    got: dict[str, list[str]] = defaultdict(list)
    for found in by_partition.values():
        for agg, event_id in found:
            got[agg].append(event_id)
    assert got == wanted, "every aggregate's events in its partition, in commit order"
    assert not await case.redis.exists(wire.Keys(TOPIC, case.prefix).events), "no plain stream"
    identity = await entries(case.redis, wire.Keys("identity", case.prefix).events)
    assert [e for _, e in identity] == [str(i) for _, i in plain], "a plain topic as before"


async def test_a_group_reads_every_partition_and_applies_each_event_once(case: Case) -> None:
    layout = await partition(case.pg, case.prefix)
    await create_effects(case.pg, case.schema)
    sent = await publish(case.redis, case.prefix, 200, aggregates=50, layout=layout)
    router = effect_router(case.schema, topic=TOPIC)
    async with running_consumer(router, **consumer_settings(case, group="g")) as consumer:

        async def all_applied() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 200

        await wait_until(all_applied, what="200 events applied")
        assert sorted(consumer.workers) == [f"{TOPIC}:{p}" for p in range(PARTITIONS)]
        for name, worker in consumer.workers.items():
            assert name == f"{TOPIC}:{worker.streams.keys.partition}"
        # More events while it runs: still once each.
        sent += await publish(case.redis, case.prefix, 40, aggregates=50, layout=layout)

        async def all_applied_again() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 240

        await wait_until(all_applied_again, what="240 events applied")
    counts = await effect_counts(case.pg, case.schema, "g")
    assert counts == {event_id: 1 for _, event_id in sent}
    for keys in wire.topic_keys(TOPIC, case.prefix, PARTITIONS):
        (group,) = await case.redis.xinfo_groups(keys.events)
        assert group["name"] == b"g" and group["pending"] == 0, keys.events


async def test_a_failing_event_retries_and_dead_letters_in_its_own_partition(case: Case) -> None:
    layout = await partition(case.pg, case.prefix)
    await create_effects(case.pg, case.schema)

    def refuse_agg3(ctx: EventContext) -> None:
        if ctx.aggregate_id == "agg3":
            raise RuntimeError("agg3 cannot be handled")

    sent = await publish(case.redis, case.prefix, 40, aggregates=8, layout=layout)
    router = effect_router(case.schema, topic=TOPIC, fail=refuse_agg3)
    settings = consumer_settings(case, group="g", max_attempts=2)
    home = wire.Keys(TOPIC, case.prefix, wire.partition_of("agg3", PARTITIONS))
    async with running_consumer(router, **settings):

        async def dead_lettered() -> bool:
            return await case.redis.xlen(home.dlq) == 5

        await wait_until(dead_lettered, what="agg3's five events dead-lettered")

        async def all_recorded() -> bool:
            return (
                len(
                    await case.pg.fetch(
                        "SELECT 1 FROM conveyor.dead_letters WHERE key_prefix = $1", case.prefix
                    )
                )
                == 5
            )

        await wait_until(all_recorded, what="the dead letters in the catalog")
        recorded = await case.pg.fetch(
            "SELECT topic, dlq_stream, source_stream FROM conveyor.dead_letters "
            "WHERE key_prefix = $1",
            case.prefix,
        )
    assert {tuple(r) for r in recorded} == {(TOPIC, home.dlq, home.events)}
    for keys in wire.topic_keys(TOPIC, case.prefix, PARTITIONS):
        if keys.partition != home.partition:
            assert await case.redis.xlen(keys.dlq) == 0, keys.dlq
    applied = await effect_counts(case.pg, case.schema, "g")
    assert set(applied) == {e for agg, e in sent if agg != "agg3"}


async def test_a_relay_stops_when_the_partition_count_changes_under_it(case: Case) -> None:
    await partition(case.pg, case.prefix)
    relay = Relay(
        RelaySettings(**case.relay_settings(heartbeat_interval=0.2)), layouts=CatalogLayouts
    )
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:
        await enqueue(case.pg, case.schema, 5, aggregates=5)
        await wait_until(lambda: drained(case.pg, case.schema), what="the first events published")
        # An ordered flag alone moves no event: the relay goes on.
        await catalog_layouts.set_layout(
            case.pg, case.prefix, TOPIC, partitions=PARTITIONS, ordered=True, on_dead_letter="park"
        )
        await asyncio.sleep(0.6)
        assert not task.done()
        await catalog_layouts.set_layout(
            case.pg, case.prefix, TOPIC, partitions=8, ordered=True, on_dead_letter="park"
        )
        with pytest.raises(LayoutChanged, match="orders: 4 -> 8 partitions"):
            await asyncio.wait_for(task, 30)
    finally:
        relay.stop()
        if not task.done():
            await asyncio.wait_for(task, 30)
        await relay.close()
    assert relay.stopping


async def test_a_plain_topic_keeps_its_stream_when_another_topic_is_partitioned(
    case: Case,
) -> None:
    await partition(case.pg, case.prefix)
    await create_effects(case.pg, case.schema)
    router = effect_router(case.schema, topic="identity")
    consumer = Consumer(
        router,
        ConsumerSettings(**consumer_settings(case, topics=("identity",))),
        catalog=ConsumerCatalog,
    )
    await consumer.start()
    try:
        assert list(consumer.workers) == ["identity"]
        assert (
            consumer.workers["identity"].streams.keys.events
            == wire.Keys("identity", case.prefix).events
        )
    finally:
        await consumer.close()


async def test_status_shows_each_partition_of_a_group_under_its_topic(case: Case) -> None:
    layout = await partition(case.pg, case.prefix)
    await create_effects(case.pg, case.schema)
    router = effect_router(case.schema, topic=TOPIC)
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        async with running_consumer(router, **consumer_settings(case, group="g")) as consumer:
            checker = StatusChecker(
                redis=case.redis,
                catalog=Catalog(pool, case.prefix),
                probe=ConsumerProbe(consumer, stall_timeout=3600),
            )
            sent = await publish(case.redis, case.prefix, 20, aggregates=20, layout=layout)

            async def applied() -> bool:
                return len(await effect_counts(case.pg, case.schema, "g")) == len(sent)

            await wait_until(applied, what="every event applied")
            snapshot = await checker.refresh()
    finally:
        await pool.close()
    names = [f"{TOPIC}:{p}" for p in range(PARTITIONS)]
    assert [(g.topic, g.group, g.lag_entries) for g in snapshot.groups] == [
        (name, "g", 0) for name in names
    ]
    assert sorted(c.name for c in snapshot.components) == [
        f"conveyor.consumer.{name}.g" for name in names
    ]
    assert {c.state for c in snapshot.components} == {"SERVING"}
