"""`conveyor topic` and the operator's tools on a partitioned topic, against real processes:
bad input refused with its exit code, a change refused while a relay runs or streams hold
entries (and forced), a relay that exits 9 when the layout changes under it, a dead letter listed
and reprocessed into its partition, and `conveyor verify` finding an event lost from a partition."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from admin.cli.options import EXIT_PRECONDITION, EXIT_RESTART, EXIT_USAGE
from admin.verify.verdicts import CLOCK_SKEW_MS
from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    running_consumer,
)
from tests.integration.partition_support import PARTITIONS, TOPIC, enqueue, partition, publish
from tests.integration.relay_support import drained
from tests.integration.test_ops_plane import READ_TOKEN, WRITE_TOKEN, port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("catalog_cleanup")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partitions", "0"], "--partitions must be 1-1024, not 0"),
        (["--partitions", "2000"], "--partitions must be 1-1024, not 2000"),
        (
            ["--partitions", "4", "--on-dead-letter", "drop"],
            "--on-dead-letter 'drop' must be park or pass",
        ),
    ],
)
def test_bad_partition_input_is_refused_before_any_change(
    case: Case, args: list[str], message: str
) -> None:
    result = run_conveyor(["topic", "partition", TOPIC, *args], case.env)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip() == f"conveyor: error: {message}"
    listed = run_conveyor(["topic", "list", "--json"], case.env)
    assert json.loads(listed.stdout) == [], "nothing was written"


def test_a_topic_name_outside_the_syntax_is_refused(case: Case) -> None:
    result = run_conveyor(["topic", "partition", "Orders{1}", "--partitions", "4"], case.env)
    assert result.returncode == EXIT_USAGE
    assert "invalid topic 'Orders{1}'" in result.stderr


async def test_a_change_waits_for_relays_to_stop_and_a_forced_one_restarts_them(
    case: Case,
) -> None:
    relay = start_conveyor(["relay"], case.env)
    try:

        async def registered() -> bool:
            return bool(
                await case.pg.fetchval(
                    "SELECT count(*) FROM conveyor.relays WHERE key_prefix = $1", case.prefix
                )
            )

        await wait_until(registered, what="the relay registered")
        args = ["topic", "partition", TOPIC, "--partitions", "4"]
        refused = await asyncio.to_thread(run_conveyor, args, case.env)
        assert refused.returncode == EXIT_PRECONDITION, refused.stderr
        assert (
            "refusing to change topic orders from unpartitioned to 4 partitions while relay "
            in (refused.stderr)
        )
        assert "--force" in refused.stderr
        assert json.loads(run_conveyor(["topic", "list", "--json"], case.env).stdout) == []

        forced = await asyncio.to_thread(run_conveyor, [*args, "--force"], case.env)
        assert forced.returncode == 0, forced.stderr
        assert "topic orders: 4 partitions, unordered" in forced.stdout
        # The relay read no layout at start: it notices at its next look and exits 9.
        out = await asyncio.to_thread(relay.communicate, timeout=60)
    finally:
        log = stop(relay)
    assert relay.returncode == EXIT_RESTART, (out, log)
    assert "topic layout changed while the relay ran (orders: 1 (unpartitioned) -> 4" in out[0]

    # Started again it routes by the new layout.
    await enqueue(case.pg, case.schema, 8, aggregates=8)
    again = start_conveyor(["relay"], case.env)
    try:
        await wait_until(lambda: drained(case.pg, case.schema), what="published by partition")
    finally:
        stop(again)
    lengths = [
        await case.redis.xlen(k.events) for k in wire.topic_keys(TOPIC, case.prefix, PARTITIONS)
    ]
    assert sum(lengths) == 8 and not await case.redis.exists(wire.Keys(TOPIC, case.prefix).events)


async def test_a_change_waits_for_the_streams_to_drain(case: Case) -> None:
    plain = wire.Keys(TOPIC, case.prefix)
    await case.redis.xgroup_create(plain.events, "g", id="0", mkstream=True)
    await case.redis.xadd(plain.events, {"id": "x"})
    one = run_conveyor(["topic", "partition", TOPIC, "--partitions", "1"], case.env)
    assert one.returncode == EXIT_PRECONDITION, "{orders:0} is another stream than {orders}"
    args = ["topic", "partition", TOPIC, "--partitions", "4"]
    refused = run_conveyor(args, case.env)
    assert refused.returncode == EXIT_PRECONDITION
    assert (
        "refusing to change topic orders from unpartitioned to 4 partitions: its streams still "
        f"hold entries not every group acknowledged: {plain.events} (1)"
    ) in refused.stderr
    shown = json.loads(run_conveyor(["topic", "show", TOPIC, "--json"], case.env).stdout)
    assert shown["partitions"] is None
    assert shown["streams"][0]["groups"] == [
        {"group": "g", "pending": 0, "undelivered": 1, "retry_entries": 0}
    ]

    # Read and acknowledged: the change goes through.
    ((_, [(entry, _)]),) = await case.redis.xreadgroup("g", "c", {plain.events: ">"})
    await case.redis.xack(plain.events, "g", entry)
    done = run_conveyor([*args, "--json"], case.env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"version": 1} == {
        "topic": TOPIC, "partitions": 4, "ordered": False, "on_dead_letter": "park",
        "version": 1, "changed": True, "previous_partitions": None,
    }  # fmt: skip
    shown = json.loads(run_conveyor(["topic", "show", TOPIC, "--json"], case.env).stdout)
    assert [s["stream"] for s in shown["streams"]] == [
        k.events for k in wire.topic_keys(TOPIC, case.prefix, 4)
    ]
    # Ordered on, same count: no check needed, the version goes up.
    ordered = run_conveyor([*args, "--ordered", "--json"], case.env)
    assert json.loads(ordered.stdout)["version"] == 2 and json.loads(ordered.stdout)["ordered"]
    gone = run_conveyor(["topic", "unpartition", TOPIC], case.env)
    assert gone.returncode == 0, gone.stderr
    assert "topic orders: unpartitioned (one stream)" in gone.stdout


async def test_a_dead_letter_of_a_partition_is_listed_and_reprocessed_into_it(
    case: Case, tmp_path: Path
) -> None:
    layout = await partition(case.pg, case.prefix)
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"reader read {hashlib.sha256(READ_TOKEN.encode()).hexdigest()}\n"
        f"writer write {hashlib.sha256(WRITE_TOKEN.encode()).hexdigest()}\n"
    )
    refuse = tmp_path / "refuse"
    refuse.touch()
    await create_effects(case.pg, case.schema)
    env = case.env | {
        "TEST_EFFECTS_SCHEMA": case.schema,
        "TEST_REJECT_FILE": str(refuse),
        "TEST_TOPIC": TOPIC,
    }
    args = ["consume", "--group", "g", "--router", "tests.integration.effects_router:router",
            "--ledger-schema", case.schema, "--tokens-file", str(tokens)]  # fmt: skip
    proc = start_conveyor(args, env)
    port = port_of(proc, [])
    home = wire.Keys(TOPIC, case.prefix, wire.partition_of("agg0", PARTITIONS))
    try:
        sent = await publish(case.redis, case.prefix, 12, aggregates=6, layout=layout)
        victims = [e for agg, e in sent if agg == "agg0"]

        async def ten() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 10

        await wait_until(ten, what="ten applied, agg0's two rejected")
        client = {"CONVEYOR_TARGET": f"127.0.0.1:{port}", "CONVEYOR_ADMIN_TOKEN": WRITE_TOKEN}

        async def listed() -> list[dict[str, str]]:
            result = await asyncio.to_thread(
                run_conveyor, ["dlq", "list", "--stream", home.dlq, "--json"], client
            )
            assert result.returncode == 0, result.stderr
            return list(json.loads(result.stdout)["dead_letters"])

        async def both_recorded() -> bool:
            return len(await listed()) == 2

        await wait_until(both_recorded, what="agg0's dead letters in the catalog")
        dead = await listed()
        assert sorted(d["event_id"] for d in dead) == sorted(victims)
        assert {d["source_stream"] for d in dead} == {home.events}
        refuse.unlink()  # the cause is fixed
        reprocess = ["dlq", "reprocess", "--stream", TOPIC, "--json",
                     *(x for d in dead for x in ("--id", d["entry_id"]))]  # fmt: skip
        result = await asyncio.to_thread(run_conveyor, reprocess, client)
        assert result.returncode == 0, result.stderr
        assert int(json.loads(result.stdout)["requeued"]) == 2

        async def twelve() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 12

        await wait_until(twelve, what="the reprocessed events applied")
        audited = await case.pg.fetch(
            "SELECT detail->>'retry_stream' FROM conveyor.audit "
            "WHERE key_prefix = $1 AND action = 'reprocess'",
            case.prefix,
        )
    finally:
        stop(proc)
    assert {r[0] for r in audited} == {home.retry("g")}, "back to the partition's retry stream"
    assert set((await effect_counts(case.pg, case.schema, "g")).values()) == {1}


async def test_verify_finds_an_event_lost_from_a_partition_stream(case: Case) -> None:
    await partition(case.pg, case.prefix)
    await create_effects(case.pg, case.schema)
    relay = start_conveyor(["relay"], case.env)
    try:
        await enqueue(case.pg, case.schema, 16, aggregates=16)
        await wait_until(lambda: drained(case.pg, case.schema), what="the first events published")
        # Later events come more than the clock skew after each stream's first entry, so the
        # gap a deleted one leaves cannot be the trimmed head of its stream.
        await asyncio.sleep(CLOCK_SKEW_MS / 1000 + 0.5)
        later = await enqueue(case.pg, case.schema, 16, aggregates=16)
        await wait_until(lambda: drained(case.pg, case.schema), what="the later events published")
    finally:
        stop(relay)
    agg, victim = later[5]
    home = wire.Keys(TOPIC, case.prefix, wire.partition_of(agg, PARTITIONS))
    entry = next(
        i
        for i, f in await case.redis.xrange(home.events)
        if f[wire.F_EVENT_ID].decode() == str(victim)
    )
    assert await case.redis.xdel(home.events, entry) == 1
    settings = consumer_settings(case, "g", housekeeping_interval=3600, topics=(TOPIC,))
    async with running_consumer(effect_router(case.schema, topic=TOPIC), **settings):

        async def applied() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 31

        await wait_until(applied, what="31 applied")
        result = await asyncio.to_thread(run_conveyor, ["verify", "--json"], case.env, 60)
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    (group,) = [g for g in data["groups"] if g["group"] == "g"]
    assert group["counts"]["lost"]["total"] == 1
    assert group["examples"]["lost"] == [str(victim)]
    assert {s["topic"] for s in group["streams"]} == {f"{TOPIC}:{p}" for p in range(PARTITIONS)}

    # `conveyor relay replay` puts it back where it belongs: its aggregate's partition.
    replay = ["relay", "replay", "--schema", case.schema, "--since", "1h", "--json"]
    replayed = await asyncio.to_thread(run_conveyor, replay, case.env)
    assert replayed.returncode == 0, replayed.stderr
    by_stream = json.loads(replayed.stdout)["by_stream"]
    assert set(by_stream) == {k.events for k in wire.topic_keys(TOPIC, case.prefix, PARTITIONS)}
    assert sum(by_stream.values()) == 32
    again = [f[wire.F_EVENT_ID].decode() for _, f in await case.redis.xrange(home.events)]
    assert again.count(str(victim)) == 1
