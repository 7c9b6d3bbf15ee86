"""Review of the consumer's everyday-rate changes (small batches on one lane, the one-query
probe and COMMIT, gathering, the hot-path decode, XACK and latency changes): cases found to
break a documented behaviour or guarantee."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers import EventContext
from consumers.reader import Reader
from conveyor import telemetry as t
from conveyor.identity.v1 import events_pb2
from relay import envelope
from relay.publisher import StreamPublisher
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    Meters,
    consumer_settings,
    create_effects,
    effect_counts,
    insert_effect,
    publish,
    registered,
    router_of,
    running_consumer,
)
from tests.integration.test_dead_letters import dead_letters, settled
from tests.processes import wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


async def publish_timed(case: Case, events: list[tuple[str, datetime | None]]) -> list[str]:
    """XADD one event per (aggregate, time) in order, in the relay's layout; their ids."""
    rows, ids = [], []
    for i, (aggregate, at) in enumerate(events):
        event_id = envelope.uuid7()
        event = envelope.build(
            registered(i),
            event_id=event_id,
            source="test",
            aggregate_type="user",
            aggregate_id=aggregate,
            occurred_at=at,
            headers={},
        )
        rows.append(
            (i, event_id, "identity", event.type, aggregate, None, event.SerializeToString())
        )
        ids.append(str(event_id))
    await StreamPublisher(case.redis, case.prefix).publish(rows)
    return ids


def on_lane(lane: int, count: int, partitions: int = 2) -> list[str]:
    """`count` aggregate ids that a consumer in this process puts on `lane`."""
    names, i = [], 0
    while len(names) < count:
        if hash(f"agg{i}") % partitions == lane:
            names.append(f"agg{i}")
        i += 1
    return names


def histogram_max(meters: Meters, name: str) -> float:
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
    old: a retry, a reclaimed entry, a backlog) is on lane 1: the observation is of lane 0's
    first event instead, a few milliseconds old, because `outcomes.done` is in lane order."""
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


async def test_every_large_batch_reads_the_next_one_ahead(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/architecture.md: "After a large batch (at least 32 events per lane, or a full one)
    the next read is issued while this batch is decoded and the previous two are applied". A
    backlog of ten full batches: a batch taken from a read ahead starts no read ahead of its
    own (`_entries` returns right after `take_ahead()`), so only every other batch is pipelined
    - with the default gather delay and with `--gather-delay 0` alike."""
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

    settings = consumer_settings(case, partitions=2, batch_size=100, gather_delay=0)
    async with running_consumer(router_of(handler), **settings):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    # Ten full batches: each of the first nine reads the next ahead (the tenth may too).
    assert len(started) >= 9, f"{len(started)} reads ahead for 10 full batches"


async def test_a_rollback_and_begin_by_sql_loses_no_neighbour(case: Case) -> None:
    """(Pre-existing, not introduced by the change under review.) docs/guarantees.md: ending
    the transaction by SQL fails the event with TransactionEnded and its neighbours are applied
    normally. A handler that sends ROLLBACK then BEGIN and returns normally leaves the
    connection in a (new) transaction, so no check notices: the consumer's probe and COMMIT
    commit the new transaction - without the ledger rows and without the effects of the events
    before it, which are then acknowledged as applied and lost."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        if ctx.aggregate_id == "agg2":
            await ctx.db.execute("ROLLBACK")
            await ctx.db.execute("BEGIN")
        await insert_effect(ctx, case.schema)

    ids = await publish(case.redis, case.prefix, 5)
    settings = consumer_settings(case, partitions=1, max_attempts=2)
    async with running_consumer(router_of(handler), **settings):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    counts = await effect_counts(case.pg, case.schema, "g")
    ledger = {
        r[0]
        for r in await case.pg.fetch(
            f"SELECT event_id::text FROM {case.schema}.event_ledger WHERE consumer_group = 'g'"
        )
    }
    dead = await dead_letters(case)
    neighbours = [i for n, i in enumerate(ids) if n != 2]
    lost = [i for i in neighbours if counts.get(i) != 1]
    assert lost == [], (
        f"{len(lost)} neighbours acknowledged without their effects; ledger rows: "
        f"{len(ledger & set(ids))} of 5; dead letters: {len(dead)}"
    )


async def test_a_deferred_constraint_trigger_failing_at_commit_is_a_handler_failure(
    case: Case,
) -> None:
    """(Pre-existing.) docs/guarantees.md: "A deferred constraint that fails at the consumer's
    COMMIT fails the event that broke it, like any handler error." Only SQLSTATE class 23 is
    taken as such: a deferred constraint trigger (CREATE CONSTRAINT TRIGGER ... DEFERRABLE
    INITIALLY DEFERRED, the usual way to check a cross-row invariant) raising its own error
    at COMMIT is taken for a database outage - the lane retries the same part with backoff
    forever, attempts are not counted, nothing is dead-lettered and the topic stops."""
    await create_effects(case.pg, case.schema)
    s = case.schema
    await case.pg.execute(
        f"CREATE FUNCTION {s}.no_agg3() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.aggregate_id = 'agg3' THEN RAISE EXCEPTION 'agg3 breaks the invariant'; END IF; "
        "RETURN NULL; END $$"
    )
    await case.pg.execute(
        f"CREATE CONSTRAINT TRIGGER no_agg3 AFTER INSERT ON {s}.effects "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.no_agg3()"
    )

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert_effect(ctx, case.schema)

    ids = await publish(case.redis, case.prefix, 6)
    settings = consumer_settings(case, partitions=1, max_attempts=2)
    async with running_consumer(router_of(handler), **settings):
        await wait_until(lambda: settled(case), timeout=15, what="every event settled")
    counts = await effect_counts(case.pg, case.schema, "g")
    assert counts == dict.fromkeys([i for n, i in enumerate(ids) if n != 3], 1)
    assert len(await dead_letters(case)) == 1


async def test_aggregate_order_holds_while_batches_switch_between_one_lane_and_two(
    case: Case,
) -> None:
    """Evidence (expected to pass): bursts alternating small (merged on one lane) and large
    (split), with a first-attempt failure here and there: every event applied once, and each
    aggregate's first attempts run in stream order."""
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
            rows: list[tuple[str, Any]] = []
            for _ in range(size):
                rows.append((names[seq % len(names)], None))
                if seq % 97 == 13:
                    failing.add(seq)
                seq += 1
            ids += await publish_timed_numbered(case, rows, seq - size)
            await asyncio.sleep(0.003)
        await wait_until(lambda: settled(case), what="every event acknowledged")
    assert await effect_counts(case.pg, case.schema, "g") == dict.fromkeys(ids, 1)
    for aggregate, order in calls.items():
        firsts = list(dict.fromkeys(order))
        assert firsts == sorted(firsts), f"{aggregate} out of order: {firsts}"


async def publish_timed_numbered(
    case: Case, events: list[tuple[str, datetime | None]], first: int
) -> list[str]:
    """Like publish_timed, numbering the payloads from `first`."""
    rows, ids = [], []
    for i, (aggregate, at) in enumerate(events, start=first):
        event_id = envelope.uuid7()
        event = envelope.build(
            registered(i),
            event_id=event_id,
            source="test",
            aggregate_type="user",
            aggregate_id=aggregate,
            occurred_at=at,
            headers={},
        )
        rows.append(
            (i, event_id, "identity", event.type, aggregate, None, event.SerializeToString())
        )
        ids.append(str(event_id))
    await StreamPublisher(case.redis, case.prefix).publish(rows)
    return ids
