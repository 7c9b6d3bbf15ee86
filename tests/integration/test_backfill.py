"""`conveyor relay backfill`: a group created after its topic's events were published and
trimmed catches up on them through its own retry stream; no other group sees them again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from admin.cli.start_point import create_groups
from consumers.settings import ConsumerSettings
from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    running_consumer,
)
from tests.integration.relay_support import drained, fill, running_relay
from tests.processes import run_conveyor, wait_until

TOPIC = "identity"
N = 40


async def create_group(case: Case, group: str, start: str = "earliest") -> None:
    """The group on the topic's streams, as its first consumer creates it."""
    await create_groups(
        ConsumerSettings(**consumer_settings(case, group, topics=(TOPIC,), start=start)),
        named=start,
    )


def backfill(case: Case, group: str, *extra: str) -> Any:
    return run_conveyor(
        ["relay", "backfill", "--topic", TOPIC, "--group", group, "--since", "1h", *extra],
        case.env,
    )


async def applied(case: Case, group: str, n: int) -> None:
    """Wait until `group` has applied `n` events."""

    async def done() -> bool:
        return len(await effect_counts(case.pg, case.schema, group)) >= n

    await wait_until(done, timeout=60, what=f"{n} events applied by {group}")


async def entries_read(case: Case, group: str) -> int:
    keys = wire.Keys(TOPIC, case.prefix)
    groups = await case.redis.xinfo_groups(keys.events)
    (mine,) = [g for g in groups if g["name"] in (group, group.encode())]
    return int(mine["entries-read"])


@pytest.mark.usefixtures("catalog_cleanup")
async def test_a_late_group_catches_up_and_the_other_group_sees_nothing_new(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    router = effect_router(case.schema)
    keys = wire.Keys(TOPIC, case.prefix)
    ids = {str(i) for i in await fill(case.pg, case.schema, N)}
    async with (
        running_relay(**case.relay_settings()),
        running_consumer(router, **consumer_settings(case, "billing")),
    ):
        await wait_until(lambda: drained(case.pg, case.schema), what="the outbox published")
        await applied(case, "billing", N)
    await case.redis.xtrim(keys.events, maxlen=0)  # as the housekeeper trims acknowledged ones
    read_before = await entries_read(case, "billing")
    await create_group(case, "search", start="latest")

    dry = backfill(case, "search", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"would send {N} events of topic {TOPIC}"), dry.stdout
    assert f"{keys.retry('search')}: {N} (events " in dry.stdout
    assert await case.redis.xlen(keys.retry("search")) == 0  # a dry run sends nothing

    done = backfill(case, "search", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["matched"], summary["sent"]) == (N, N)
    assert summary["by_stream"] == {keys.retry("search"): N}
    again = backfill(case, "search")  # twice: the ledger absorbs the second copies
    assert again.returncode == 0, again.stderr
    async with (
        running_consumer(router, **consumer_settings(case, "search")),
        running_consumer(router, **consumer_settings(case, "billing")),
    ):
        await applied(case, "search", N)

        async def retry_drained() -> bool:
            return await case.redis.xlen(keys.retry("search")) == 0

        await wait_until(retry_drained, timeout=60, what="both backfills handled")
    search = await effect_counts(case.pg, case.schema, "search")
    assert set(search) == ids and set(search.values()) == {1}
    billing = await effect_counts(case.pg, case.schema, "billing")
    assert set(billing) == ids and set(billing.values()) == {1}  # unchanged
    assert await entries_read(case, "billing") == read_before  # no new deliveries
    assert await case.redis.xlen(keys.retry("billing")) == 0


@pytest.mark.usefixtures("catalog_cleanup")
async def test_a_partitioned_topic_backfills_each_event_into_its_partitions_retry_stream(
    case: Case,
) -> None:
    await case.pg.execute(
        "INSERT INTO conveyor.topic_layouts (key_prefix, topic, partitions) VALUES ($1, $2, 3)",
        case.prefix,
        TOPIC,
    )
    try:
        await fill(case.pg, case.schema, N)
        await case.pg.execute(f"UPDATE {case.schema}.outbox SET published_at = now()")
        await create_group(case, "search")
        done = backfill(case, "search", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["sent"] == N
        total = 0
        for part, keys in enumerate(wire.topic_keys(TOPIC, case.prefix, 3)):
            for _id, fields in await case.redis.xrange(keys.retry("search")):
                aggregate = fields[wire.F_AGGREGATE_ID].decode()
                assert wire.partition_of(aggregate, 3) == part
                assert wire.RT_DEAD_LETTER not in fields  # not a reprocessed dead letter
                total += 1
        assert total == N
    finally:
        await case.pg.execute(
            "DELETE FROM conveyor.topic_layouts WHERE key_prefix = $1", case.prefix
        )


@pytest.mark.usefixtures("catalog_cleanup")
async def test_an_unknown_group_or_a_bad_window_is_refused_and_nothing_is_sent(
    case: Case,
) -> None:
    await fill(case.pg, case.schema, 3)
    await case.pg.execute(f"UPDATE {case.schema}.outbox SET published_at = now()")
    keys = wire.Keys(TOPIC, case.prefix)
    unknown = backfill(case, "nobody")
    assert unknown.returncode == 6, unknown.stderr
    assert "consumer group 'nobody' does not exist on topic 'identity'" in unknown.stderr
    assert "start a consumer of the group first" in unknown.stderr
    assert not await case.redis.exists(keys.retry("nobody"))
    await create_group(case, "search")
    for extra, said in [
        (("--until", "2h"), "--until '2h' ("),
        (("--until", "tomorrow"), "--until: invalid time 'tomorrow'"),
        (("--until", "2999-01-01T00:00:00Z"), "it is in the future"),
    ]:
        refused = backfill(case, "search", *extra)
        assert refused.returncode == 2, refused.stderr
        assert said in refused.stderr, refused.stderr
    bad_since = run_conveyor(
        ["relay", "backfill", "--topic", TOPIC, "--group", "search", "--since", "soon"], case.env
    )
    assert bad_since.returncode == 2 and "--since: invalid time 'soon'" in bad_since.stderr
    assert await case.redis.xlen(keys.retry("search")) == 0


@pytest.mark.usefixtures("catalog_cleanup")
async def test_until_bounds_the_window(case: Case) -> None:
    await fill(case.pg, case.schema, 3)
    outbox = f"{case.schema}.outbox"
    await case.pg.execute(f"UPDATE {outbox} SET published_at = now()")
    await case.pg.execute(
        f"UPDATE {outbox} SET published_at = now() - interval '2h' "
        f"WHERE id = (SELECT min(id) FROM {outbox})"
    )
    await create_group(case, "search")
    args = ["relay", "backfill", "--topic", TOPIC, "--group", "search", "--json"]
    older = run_conveyor([*args, "--since", "3h", "--until", "1h"], case.env)
    assert older.returncode == 0, older.stderr
    assert json.loads(older.stdout)["sent"] == 1
    newer = run_conveyor([*args, "--since", "1h"], case.env)
    assert json.loads(newer.stdout)["sent"] == 2
