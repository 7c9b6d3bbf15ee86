"""`conveyor verify` on live deployments of real servers: every event of the window counted for
each group as applied, dead-lettered, in flight, unknown or lost, and exit 1 only for a loss."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from admin.catalog import Catalog
from admin.cli.app import app
from admin.verify.verdicts import CLOCK_SKEW_MS
from consumers import EventContext, Reject
from conveyor import wire
from conveyor.entry_ids import EntryId
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_router,
    ledger_results,
    running_consumer,
)
from tests.integration.relay_support import drained, fill, running_relay
from tests.processes import run_conveyor, wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")

TOPIC = "identity"


def name(kind: str) -> str:
    """A group name no other test uses: a stopped group's ledger is found by its rows."""
    return f"{kind}-{uuid.uuid4().hex[:8]}"


async def verify(case: Case, *args: str) -> subprocess.CompletedProcess[str]:
    """`conveyor verify ARGS` against the case, in a thread (consumers run in this loop)."""
    return await asyncio.to_thread(run_conveyor, ["verify", *args], case.env, 60)


async def report(case: Case, *args: str, code: int = 0) -> dict[str, Any]:
    """The JSON report of `conveyor verify --json ARGS`, which must exit with `code`."""
    result = await verify(case, "--json", *args)
    assert result.returncode == code, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def group_of(data: dict[str, Any], group: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [g for g in data["groups"] if g["group"] == group]
    assert len(found) == 1, data["groups"]
    return found[0]


def counts(data: dict[str, Any], group: str) -> dict[str, Any]:
    """The group's counts, without the classes it has none of."""
    got = group_of(data, group)["counts"]
    return {k: v for k, v in got.items() if k == "events" or v["total"]}


async def publish(case: Case, n: int) -> list[str]:
    """Commit `n` events to the outbox and let a relay publish them; their ids."""
    async with running_relay(**case.relay_settings()):
        ids = await fill(case.pg, case.schema, n)
        await wait_until(lambda: drained(case.pg, case.schema), what="the outbox published")
    return [str(i) for i in ids]


async def applied(case: Case, group: str, n: int) -> None:
    async def done() -> bool:
        results = (await ledger_results(case, group)).values()
        return sum(1 for r in results if r == "success") >= n

    await wait_until(done, what=f"{n} ledger rows of {group}")


async def entry_of(case: Case, event_id: str) -> str:
    stream = wire.Keys(TOPIC, case.prefix).events
    for entry, fields in await case.redis.xrange(stream):
        if fields[wire.F_EVENT_ID].decode() == event_id:
            return str(entry.decode())
    raise AssertionError(f"no entry of {event_id}")


async def test_a_clean_deployment_has_every_event_applied(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    ids = await publish(case, 20)
    exact, loose = name("mailer"), name("audit")
    router = effect_router(case.schema)
    async with (
        running_consumer(router, **consumer_settings(case, exact)),
        running_consumer(router, **consumer_settings(case, loose, mode="at-least-once")),
    ):
        await applied(case, exact, 20)

        async def acknowledged() -> bool:
            groups = await case.redis.xinfo_groups(wire.Keys(TOPIC, case.prefix).events)
            return any(
                g["name"].decode() == loose and g["lag"] == g["pending"] == 0 for g in groups
            )

        await wait_until(acknowledged, what="the at-least-once group done")
        data = await report(case, "--since", "1h")
        only = await report(case, "--group", exact)
        table = await verify(case)
    assert data["events"] == 20 and data["lost"] == 0
    assert counts(data, exact) == {"events": 20, "applied": {"total": 20, "success": 20}}
    assert group_of(data, exact)["ledger_schema"] == case.schema
    loose_report = group_of(data, loose)
    assert not loose_report["verified"] and loose_report["counts"] is None
    assert loose_report["mode"] == "at-least-once"
    assert loose_report["streams"] == [{"topic": TOPIC, "on_stream": True, "lag": 0, "pending": 0}]
    assert [g["group"] for g in only["groups"]] == [exact]
    assert table.returncode == 0, table.stderr
    assert "nothing lost" in table.stdout
    shown = " ".join(table.stdout.split())  # the table wraps free text at 80 columns
    assert "not verifiable (at-least-once): no ledger records what it applied" in shown
    assert set(ids) == set((await ledger_results(case, exact)).keys())


async def test_an_event_deleted_from_the_stream_before_delivery_is_lost(case: Case) -> None:
    """The brief of the runbook: exit 1 naming the event; once trimmed from the stream's head it
    is unknown, not lost; `conveyor relay replay` brings it back and the group applies it."""
    await create_effects(case.pg, case.schema)
    group = name("mailer")
    await publish(case, 1)
    # Later events are published more than the clock skew after the stream's first entry, so
    # the gap left by a deleted one cannot be the trimmed head of the stream.
    await asyncio.sleep(CLOCK_SKEW_MS / 1000 + 0.5)
    later = await publish(case, 5)
    victim = later[2]
    stream = wire.Keys(TOPIC, case.prefix).events
    assert await case.redis.xdel(stream, await entry_of(case, victim)) == 1
    settings = consumer_settings(case, group, housekeeping_interval=3600)
    async with running_consumer(effect_router(case.schema), **settings):
        await applied(case, group, 5)
        data = await report(case, code=1)
        table = await verify(case)
    assert counts(data, group) == {
        "events": 6,
        "applied": {"total": 5, "success": 5},
        "lost": {"total": 1, "deleted": 1},
    }
    assert group_of(data, group)["examples"] == {"lost": [victim]}
    assert table.returncode == 1
    assert victim in table.stdout and "LOST: 1 event " in table.stdout
    command = f"conveyor relay replay --schema {case.schema} --since "
    assert command in table.stdout and f" --key-prefix {case.prefix}`" in table.stdout

    # The housekeeper trims what every group acknowledged: the gap is then within the trimmed
    # head, which a live deployment cannot tell from a trim, so it is unknown.
    last = (await case.redis.xrevrange(stream, count=1))[0][0]
    await case.redis.xtrim(stream, minid=str(EntryId.parse(last).after()))
    data = await report(case)  # the consumer stopped: its ledger is found by its rows
    assert counts(data, group)["unknown"] == {"total": 1, "trimmed": 1}
    assert group_of(data, group)["ledger_source"] == "inferred"

    replay = await asyncio.to_thread(
        run_conveyor, ["relay", "replay", "--schema", case.schema, "--since", "1h"], case.env
    )
    assert replay.returncode == 0, replay.stderr
    async with running_consumer(effect_router(case.schema), **settings):
        await applied(case, group, 6)
        data = await report(case)
    assert counts(data, group) == {"events": 6, "applied": {"total": 6, "success": 6}}


async def test_rejected_events_are_dead_lettered_not_lost(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    rejected: set[str] = set()

    def refuse(ctx: EventContext) -> None:
        if ctx.event_id in rejected:
            raise Reject("refused for the test")

    group = name("mailer")
    ids = await publish(case, 6)
    rejected |= {ids[1], ids[4]}
    async with running_consumer(
        effect_router(case.schema, fail=refuse), **consumer_settings(case, group)
    ):
        await applied(case, group, 4)
        pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=1)
        try:
            catalog = Catalog(pool, case.prefix)

            async def recorded() -> bool:
                return (
                    len(await catalog.dead_letters_of_events([uuid.UUID(i) for i in rejected])) == 2
                )

            await wait_until(recorded, what="both dead letters in the catalog")
            letters = await catalog.dead_letters_for_event(uuid.UUID(ids[4]))
            await catalog.resolve(letters, reason="refunded by hand", principal="test")
        finally:
            await pool.close()
        data = await report(case)
    assert counts(data, group) == {
        "events": 6,
        "applied": {"total": 4, "success": 4},
        "dead-lettered": {"total": 2, "open": 1, "resolved": 1},
    }
    assert sorted(group_of(data, group)["examples"]["dead-lettered"]) == sorted(rejected)


async def test_entries_not_yet_delivered_or_acknowledged_are_in_flight(case: Case) -> None:
    """No consumer runs: the test is the group, reading and acknowledging by hand. An entry it
    acknowledges with no ledger row is lost; a stream Redis lost takes its entries with it."""
    group = name("billing")
    stream = wire.Keys(TOPIC, case.prefix).events
    await case.redis.xgroup_create(stream, group, id="0", mkstream=True)
    ids = await publish(case, 5)
    # No registered member and no ledger row: the group's ledger schema must be given.
    data = await report(case)
    assert "ledger schema unknown" in group_of(data, group)["not_verified"]
    asked = await verify(case, "--group", group)
    assert asked.returncode == 2
    assert f"give --ledger-schema {group}=SCHEMA" in asked.stderr
    mapping = ("--ledger-schema", f"{group}={case.schema}")

    await case.redis.xreadgroup(group, "by-hand", {stream: ">"}, count=2)
    data = await report(case, *mapping)
    assert counts(data, group) == {
        "events": 5,
        "in-flight": {"total": 5, "pending": 2, "undelivered": 3},
    }
    assert group_of(data, group)["ledger_source"] == "option"

    await case.redis.xack(stream, group, await entry_of(case, ids[0]))
    unpublished = [str(i) for i in await fill(case.pg, case.schema, 2)]  # no relay runs now
    data = await report(case, *mapping, "--examples", "10", code=1)
    assert counts(data, group) == {
        "events": 7,
        "in-flight": {"total": 6, "pending": 1, "undelivered": 3, "unpublished": 2},
        "lost": {"total": 1, "acknowledged": 1},
    }
    examples = group_of(data, group)["examples"]
    assert examples["lost"] == [ids[0]]
    assert set(examples["in-flight"]) == {*ids[1:], *unpublished}


async def test_events_of_a_stream_redis_lost_are_lost_until_replayed(case: Case) -> None:
    """Redis lost the stream with the group on it; the group's consumer recreated both, empty.
    The runbook's replay brings the events back."""
    await create_effects(case.pg, case.schema)
    group = name("mailer")
    stream = wire.Keys(TOPIC, case.prefix).events
    await case.redis.xgroup_create(stream, group, id="0", mkstream=True)
    ids = await publish(case, 4)
    await case.redis.delete(stream)
    settings = consumer_settings(case, group)
    async with running_consumer(effect_router(case.schema), **settings):
        data = await report(case, code=1)
    assert counts(data, group) == {"events": 4, "lost": {"total": 4, "stream-reset": 4}}
    assert sorted(group_of(data, group)["examples"]["lost"]) == sorted(ids)

    replay = await asyncio.to_thread(
        run_conveyor, ["relay", "replay", "--schema", case.schema, "--since", "2h"], case.env
    )
    assert replay.returncode == 0, replay.stderr
    async with running_consumer(effect_router(case.schema), **settings):
        await applied(case, group, 4)
        data = await report(case)
    assert counts(data, group) == {"events": 4, "applied": {"total": 4, "success": 4}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since: invalid time 'yesterday'"),
        (["--since", "1e12"], "--since: invalid time '1e12': it is before year 1"),
        (["--since", "99999999999d"], "--since: invalid time '99999999999d': it is before year 1"),
        (["--since", "2h", "--group", "nope"], "unknown group 'nope' (--group)"),
        (["--ledger-schema", "nope=public"], "unknown group 'nope' (--ledger-schema)"),
        (["--group", "no{brace}"], "invalid group name 'no{brace}'"),
        (["--ledger-schema", "g=Bad-Schema"], "invalid --ledger-schema 'g=Bad-Schema'"),
        (["--ledger-schema", "a", "--ledger-schema", "b"], "a plain SCHEMA is given once"),
        (["--examples", "-1"], "--examples must be 0-1000, got -1"),
        (["--ledger-retention", "forever"], "invalid --ledger-retention 'forever'"),
    ],
)
def test_bad_input_exits_2_naming_the_value(case: Case, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["verify", *args], env=case.env)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("conveyor: error: ")
    assert message in result.stderr
    assert result.stdout == ""


def test_a_ledger_retention_longer_than_the_calendar_expires_nothing(case: Case) -> None:
    """Exit 0 on an empty window, as with any retention: not a traceback and exit 1, which
    would say an event was lost."""
    for retention in ("1e12", "1e20"):
        result = CliRunner().invoke(app, ["verify", "--ledger-retention", retention], env=case.env)
        assert result.exit_code == 0, result.stderr
        assert "nothing lost" in result.stdout


def test_an_unreachable_redis_exits_7_naming_it(case: Case) -> None:
    env = case.env | {"CONVEYOR_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = CliRunner().invoke(app, ["verify"], env=env)
    assert result.exit_code == 7, result.stderr
    assert result.stderr.startswith("conveyor: error: Redis at redis://127.0.0.1:1/0: ")


async def test_an_unknown_group_is_named_with_the_groups_there_are(case: Case) -> None:
    group = name("mailer")
    async with running_consumer(effect_router(case.schema), **consumer_settings(case, group)):
        result = await verify(case, "--group", "mailre")
    assert result.returncode == 2
    assert f"groups there: {group}" in result.stderr
