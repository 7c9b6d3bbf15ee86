"""Large batches: split over the lanes, each reading the next batch ahead, one latency
observation per batch of its oldest event; aggregate order holds while batches switch between
one lane (small, merged) and two (large, split)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from consumers import EventContext
from consumers.reader import Reader
from conveyor import telemetry as t
from conveyor.identity.v1 import events_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    Meters,
    consumer_settings,
    create_effects,
    effect_counts,
    insert_effect,
    publish,
    publish_timed,
    router_of,
    running_consumer,
)
from tests.integration.test_dead_letters import settled
from tests.processes import wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


def on_lane(lane: int, count: int, partitions: int = 2) -> list[str]:
    """`count` aggregate ids that a consumer in this process puts on `lane`."""
    names, i = [], 0
    while len(names) < count:
        if hash(f"agg{i}") % partitions == lane:
            names.append(f"agg{i}")
        i += 1
    return names


def histogram_max(meters: Meters, name: str) -> float:
    """The largest value the histogram `name` observed."""
    data = meters.reader.get_metrics_data()
    most = 0.0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        most = max(most, point.max)
    return most


async def test_end_to_end_latency_observes_the_batchs_oldest_event(case: Case) -> None:
    """docs/metrics.md: one observation per batch, "of its oldest event" (percentiles are an
    upper bound). A batch large enough to be split over two lanes whose oldest event (an hour
    old: a retry, a reclaimed entry, a backlog) is on lane 1, behind lane 0's young ones in the
    applied events' order: the observation is the hour-old one's."""
    await create_effects(case.pg, case.schema)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    old = on_lane(1, 1)[0]
    young = on_lane(0, 20) + on_lane(1, 21)[1:]
    events: list[tuple[str, datetime | None]] = [(old, hour_ago)]
    events += [(young[i % len(young)], None) for i in range(199)]
    await publish_timed(case, events)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert_effect(ctx, case.schema)

    meters = Meters()
    settings = consumer_settings(case, partitions=2)
    async with running_consumer(router_of(handler), meters.metrics, **settings):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    oldest = histogram_max(meters, t.EVENT_END_TO_END_LATENCY)
    assert oldest >= 3500, f"the batch's oldest event is an hour old; observed {oldest:.3f}s"


@pytest.mark.parametrize("gather_delay", [0.0, 0.001])
async def test_every_large_batch_reads_the_next_one_ahead(
    case: Case, monkeypatch: pytest.MonkeyPatch, gather_delay: float
) -> None:
    """docs/architecture.md: "After a large batch (at least 32 events per lane, or a full one)
    the next read is issued while this batch is decoded and the previous two are applied". A
    backlog of ten full batches, with gathering (the default delay) or without: a batch taken
    from a read ahead starts the next read ahead too, so every batch is pipelined."""
    await create_effects(case.pg, case.schema)
    await publish(case.redis, case.prefix, 1000)
    started: list[float] = []
    real = Reader.read_ahead

    def counted(self: Reader) -> None:
        started.append(time.monotonic())
        real(self)

    monkeypatch.setattr(Reader, "read_ahead", counted)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert_effect(ctx, case.schema)

    settings = consumer_settings(case, partitions=2, batch_size=100, gather_delay=gather_delay)
    async with running_consumer(router_of(handler), **settings):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    # Ten full batches: each of the first nine reads the next ahead (the tenth may too).
    assert len(started) >= 9, f"{len(started)} reads ahead for 10 full batches"


async def test_aggregate_order_holds_while_batches_switch_between_one_lane_and_two(
    case: Case,
) -> None:
    """Bursts alternating small (merged on one lane) and large (split), with a first-attempt
    failure here and there: every event applied once, and each aggregate's first attempts run
    in stream order."""
    await create_effects(case.pg, case.schema)
    calls: dict[str, list[int]] = defaultdict(list)
    failing: set[int] = set()

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        n = int(event.user_id.removeprefix("u"))
        if ctx.attempt == 1:
            calls[ctx.aggregate_id].append(n)
        if n in failing and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        await insert_effect(ctx, case.schema)

    names = on_lane(0, 4) + on_lane(1, 4)
    ids: list[str] = []
    seq = 0
    settings = consumer_settings(case, partitions=2, gather_delay=0.002)
    async with running_consumer(router_of(handler), **settings):
        for burst in range(12):
            size = 6 if burst % 2 else 150
            rows: list[tuple[str, datetime | None]] = []
            for _ in range(size):
                rows.append((names[seq % len(names)], None))
                if seq % 97 == 13:
                    failing.add(seq)
                seq += 1
            ids += await publish_timed(case, rows, seq - size)
            await asyncio.sleep(0.003)
        await wait_until(lambda: settled(case), what="every event acknowledged")
    assert await effect_counts(case.pg, case.schema, "g") == dict.fromkeys(ids, 1)
    for aggregate, order in calls.items():
        firsts = list(dict.fromkeys(order))
        assert firsts == sorted(firsts), f"{aggregate} out of order: {firsts}"
