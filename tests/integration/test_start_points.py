"""A group's start point (`--start`): applied on the streams it is created on, each partition's
too; a group that exists keeps its place; the retry stream always from its beginning."""

from __future__ import annotations

import logging

import pytest

from admin.cli.start_point import create_groups
from consumers.settings import ConsumerSettings
from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.integration.startup_support import args_of, env_of, output_until
from tests.processes import start_conveyor, stop, wait_until

LAYOUTS = "conveyor.topic_layouts"


def settings(case: Case, start: str, group: str = "late") -> ConsumerSettings:
    return ConsumerSettings(
        group=group,
        topics=("identity",),
        database_url=case.database_url,
        redis_url=case.redis_url,
        key_prefix=case.prefix,
        ledger_schema=case.schema,
        start=start,
    )


async def delivered(case: Case, stream: str, group: str = "late") -> int:
    """Entries a member of `group` reads from `stream` now."""
    reply = await case.redis.xreadgroup(group, "m", {stream: ">"}, count=1000)
    return sum(len(entries) for _key, entries in reply)


async def test_latest_skips_what_the_stream_holds_and_earliest_takes_it(case: Case) -> None:
    await publish(case.redis, case.prefix, 5)
    keys = wire.Keys("identity", case.prefix)
    await create_groups(settings(case, "latest"), named="latest")
    await create_groups(settings(case, "earliest", "early"), named="earliest")
    await publish(case.redis, case.prefix, 2)
    assert await delivered(case, keys.events) == 2
    assert await delivered(case, keys.events, "early") == 7


async def test_a_time_starts_from_the_first_event_appended_then(case: Case) -> None:
    keys = wire.Keys("identity", case.prefix)
    await publish(case.redis, case.prefix, 3)
    ((third, _),) = (await case.redis.xrevrange(keys.events, count=1))[:1]
    ms = int(third.decode().split("-")[0]) + 1
    await case.redis.xadd(keys.events, {"v": "1"}, id=f"{ms + 5}-0")  # later than the id
    await create_groups(settings(case, f"{ms}-0"), named="2h")
    assert await delivered(case, keys.events) == 1


async def test_an_existing_group_keeps_its_place_and_the_log_says_where_it_stands(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    keys = wire.Keys("identity", case.prefix)
    await publish(case.redis, case.prefix, 4)
    await create_groups(settings(case, "earliest"), named="earliest")
    assert await delivered(case, keys.events) == 4
    await publish(case.redis, case.prefix, 1)
    with caplog.at_level(logging.INFO, logger="consumers.start_points"):
        await create_groups(settings(case, "latest"), named="latest")
    assert await delivered(case, keys.events) == 1  # not moved to the end by --start latest
    (line,) = [r.getMessage() for r in caplog.records if "group exists" in r.getMessage()]
    assert "start=latest not applied" in line
    assert f"stream={keys.events}" in line and "pending=4" in line and "lag=1" in line


async def test_the_retry_stream_starts_at_its_beginning_whatever_the_start(case: Case) -> None:
    keys = wire.Keys("identity", case.prefix)
    await case.redis.xadd(keys.retry("late"), {"v": "1"})  # written before the group existed
    await create_groups(settings(case, "latest"), named="latest")
    assert await delivered(case, keys.retry("late")) == 1


@pytest.mark.usefixtures("catalog_cleanup")
async def test_each_partition_of_a_partitioned_topic_gets_the_group_at_the_start(
    case: Case,
) -> None:
    await case.pg.execute(
        f"INSERT INTO {LAYOUTS} (key_prefix, topic, partitions) VALUES ($1, 'identity', 3)",
        case.prefix,
    )
    try:
        parts = wire.topic_keys("identity", case.prefix, 3)
        for keys in parts:
            await case.redis.xadd(keys.events, {"v": "1"})
        await create_groups(settings(case, "latest"), named="latest")
        for keys in parts:
            await case.redis.xadd(keys.events, {"v": "1"})
            assert await delivered(case, keys.events) == 1
    finally:
        await case.pg.execute(f"DELETE FROM {LAYOUTS} WHERE key_prefix = $1", case.prefix)


@pytest.mark.usefixtures("catalog_cleanup")
async def test_conveyor_consume_start_latest_then_a_restart_keeps_the_groups_place(
    case: Case,
) -> None:
    # A service deployed with --start latest takes none of the 3 events already in the stream,
    # only the 2 published after it started; restarted with --start earliest, it does not go
    # back to the beginning: the group exists, the log says where it stands.
    await create_effects(case.pg, case.schema)
    await publish(case.redis, case.prefix, 3)
    env = env_of(case.env, case.schema) | {"CONVEYOR_START": "latest"}
    first = start_conveyor(args_of("consume", case.schema), env)
    try:
        started = output_until(first, "consumer started")
        assert "group created: stream=" in started and "start=latest (id $)" in started
        later = set(await publish(case.redis, case.prefix, 2))

        async def applied() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) >= 2

        await wait_until(applied, timeout=60, what="the 2 later events applied")
    finally:
        stop(first)
    second = start_conveyor(args_of("consume", case.schema, "--start", "earliest"), env)
    try:
        started = output_until(second, "consumer started")
    finally:
        stop(second)
    assert "group exists, start=earliest not applied" in started, started
    assert "pending=0 lag=0" in started, started
    assert set(await effect_counts(case.pg, case.schema, "g")) == later
