"""`--start` after the topic's layout changed: the group exists on the topic (on its old stream),
so the start point must not apply to the new partition streams, where the relays restarted first
(as the procedure says) already published the events that waited in the outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest

from admin.catalog import RelayRegistry
from admin.catalog import layouts as catalog_layouts
from admin.catalog.recording import ConsumerCatalog
from admin.cli.options import EXIT_PRECONDITION
from admin.cli.start_point import create_groups
from consumers.metrics import ConsumerMetrics
from consumers.retention import Housekeeper
from conveyor import wire
from conveyor.layouts import Layout
from relay import Relay
from relay.errors import LayoutChanged
from relay.settings import RelaySettings
from tests.integration.catalog_support import add
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    running_consumer,
)
from tests.integration.partition_support import TOPIC, enqueue, partition, publish
from tests.integration.relay_support import drained
from tests.integration.test_start_points import delivered, settings
from tests.processes import run_conveyor, wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


@pytest.fixture(name="pool")
async def fixture_pool(case: Case) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(case.database_url, min_size=1, max_size=4) as p:
        yield p


async def test_start_latest_does_not_skip_what_the_relays_published_after_a_repartition(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """A group deployed with CONVEYOR_START=latest; the topic is split in 4 (its streams had no
    groups there yet: the layout was set straight in the catalog); the relays, started first,
    publish the events that waited; then the group's consumer starts, still with --start latest,
    and must apply every one of them."""
    plain = wire.Keys(TOPIC, case.prefix)
    group = dataclasses.replace(settings(case, "latest"), topics=(TOPIC,))
    await create_groups(group, named="latest")  # the group's first deployment: --start latest
    assert await delivered(case, plain.events) == 0
    layout = await partition(case.pg, case.prefix)
    sent = await publish(case.redis, case.prefix, 12, aggregates=12, layout=layout)
    await create_effects(case.pg, case.schema)
    late = consumer_settings(case, "late", topics=(TOPIC,), start="latest")
    with caplog.at_level(logging.INFO, logger="consumers.start_points"):
        async with running_consumer(effect_router(case.schema, topic=TOPIC), **late):

            async def all_applied() -> bool:
                return len(await effect_counts(case.pg, case.schema, "late")) == len(sent)

            await wait_until(all_applied, timeout=30, what="the 12 events applied")
    lines = [r.getMessage() for r in caplog.records if "group created" in r.getMessage()]
    assert len(lines) == layout.partitions
    assert all("start=latest not applied" in line and "(id 0)" in line for line in lines), lines


async def test_a_group_restarted_after_another_after_a_repartition_loses_nothing_to_trims(
    case: Case, pool: asyncpg.Pool
) -> None:
    """Groups a and b read the unpartitioned topic; it is split in 4 as the procedure says. The
    relays publish into the partitions, a's consumers start first and their housekeeper trims what
    a acknowledged; b's consumers start later: b must still get every event."""
    plain = wire.Keys(TOPIC, case.prefix)
    for group in ("a", "b"):
        await case.redis.xgroup_create(plain.events, group, id="0", mkstream=True)
    changed = await asyncio.to_thread(
        run_conveyor, ["topic", "partition", TOPIC, "--partitions", "4"], case.env
    )
    assert changed.returncode == 0, changed.stderr
    assert "groups a, b created on the new streams at their beginning" in changed.stdout
    layout = (await catalog_layouts.layouts(case.pg, case.prefix))[TOPIC]
    sent = await publish(case.redis, case.prefix, 12, aggregates=12, layout=layout)
    parts = wire.topic_keys(TOPIC, case.prefix, layout.partitions)
    a = dataclasses.replace(settings(case, "earliest", "a"), topics=(TOPIC,))
    await create_groups(a, named="earliest")
    for keys in parts:
        for _key, entries in await case.redis.xreadgroup("a", "m", {keys.events: ">"}):
            await case.redis.xack(keys.events, "a", *(i for i, _ in entries))
    keeper = Housekeeper(pool, case.redis, a, ConsumerMetrics(), catalog=ConsumerCatalog(pool))
    await keeper.run_once(parts)
    b = dataclasses.replace(settings(case, "earliest", "b"), topics=(TOPIC,))
    await create_groups(b, named="earliest")
    got = sum([await delivered(case, k.events, "b") for k in parts])
    assert got == len(sent), "the housekeeper of group a trimmed events group b never read"


class _ChangedMeanwhile:
    """The catalog's layouts, with `conveyor topic partition` committing just after the relay's
    first read: its check for running relays ran before the relay registered."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.reads = 0

    async def layouts(self, key_prefix: str) -> dict[str, Layout]:
        found = await catalog_layouts.layouts(self._pool, key_prefix)
        self.reads += 1
        if self.reads == 1:
            await catalog_layouts.set_layout(
                self._pool, key_prefix, TOPIC, partitions=4, ordered=False, on_dead_letter="park"
            )
        return found


async def test_a_relay_starting_while_the_layout_changes_publishes_nothing_by_the_old_one(
    case: Case,
) -> None:
    await enqueue(case.pg, case.schema, 3, aggregates=3)
    relay = Relay(
        RelaySettings(**case.relay_settings()), registry=RelayRegistry, layouts=_ChangedMeanwhile
    )
    try:
        with pytest.raises(LayoutChanged, match="orders: 1 \\(unpartitioned\\) -> 4 partitions"):
            await relay.start()
    finally:
        await relay.close()
    assert not await case.redis.exists(wire.Keys(TOPIC, case.prefix).events)
    assert not await drained(case.pg, case.schema), "the events wait in the outbox"


async def test_a_start_time_includes_an_event_appended_in_its_very_millisecond(
    case: Case,
) -> None:
    """`--start 2026-11-29T05:00:00Z` is the stream id `<ms>-0`: an event the relay appended in
    that millisecond (its entry id is `<ms>-0`) is appended at that time, so the group takes it."""
    keys = wire.Keys("identity", case.prefix)
    ms = 1_764_000_000_000
    await case.redis.xadd(keys.events, {"v": "before"}, id=f"{ms - 1}-0")
    await case.redis.xadd(keys.events, {"v": "at"}, id=f"{ms}-0")
    await case.redis.xadd(keys.events, {"v": "after"}, id=f"{ms}-1")
    await create_groups(settings(case, f"{ms}-0"), named="2025-11-24T16:00:00Z")
    assert await delivered(case, keys.events) == 2


async def test_a_change_waits_for_the_dead_letters_of_the_old_streams_to_be_recorded(
    case: Case,
) -> None:
    """A dead letter written while PostgreSQL was away is recorded later by the reconciler of a
    consumer of its stream. After a change no consumer reads the old streams: the change waits
    until their dead letters are in the catalog, or `dlq list` would never show them."""
    plain = wire.Keys(TOPIC, case.prefix)
    entry = (await case.redis.xadd(plain.dlq, {wire.F_EVENT_ID: "e1"})).decode()
    args = ["topic", "partition", TOPIC, "--partitions", "4"]
    refused = await asyncio.to_thread(run_conveyor, args, case.env)
    assert refused.returncode == EXIT_PRECONDITION, refused.stdout
    assert (
        "refusing to change topic orders from unpartitioned to 4 partitions: dead letters of its "
        f"streams are not in the catalog yet: {plain.dlq} (1, e.g. {entry})"
    ) in refused.stderr
    await add(case.pg, TOPIC, dlq_stream=plain.dlq, dlq_entry_id=entry)  # the reconciler's row
    done = await asyncio.to_thread(run_conveyor, args, case.env)
    assert done.returncode == 0, done.stderr
