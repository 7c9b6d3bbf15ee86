"""Deferred constraints in handlers: checked early by name, or at the consumer's COMMIT, where a
violation fails its event like any handler failure (guarantees 3 and 4). The commit guard is a
deferred constraint trigger itself, so `SET CONSTRAINTS ALL` is refused with a clear message."""

from __future__ import annotations

import pytest

from consumers import EventContext
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    insert_effect,
    publish,
    router_of,
    running_consumer,
)
from tests.integration.test_dead_letters import dead_letters, settled
from tests.processes import wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


async def test_a_handler_checking_a_named_deferred_constraint_early_is_applied(
    case: Case,
) -> None:
    """`SET CONSTRAINTS <name> IMMEDIATE` checks a deferred foreign key inside the handler; the
    commit guard is untouched, and every event is applied once."""
    await create_effects(case.pg, case.schema)
    await case.pg.execute(f"CREATE TABLE {case.schema}.parents (id text PRIMARY KEY)")
    await case.pg.execute(
        f"ALTER TABLE {case.schema}.effects ADD CONSTRAINT effects_parent_fkey "
        f"FOREIGN KEY (aggregate_id) REFERENCES {case.schema}.parents (id) "
        "DEFERRABLE INITIALLY DEFERRED"
    )

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await ctx.db.execute(
            f"INSERT INTO {case.schema}.parents (id) VALUES ($1) ON CONFLICT DO NOTHING",
            ctx.aggregate_id,
        )
        await insert_effect(ctx, case.schema)
        await ctx.db.execute(f"SET CONSTRAINTS {case.schema}.effects_parent_fkey IMMEDIATE")

    ids = await publish(case.redis, case.prefix, 5)
    conf = consumer_settings(case, max_attempts=2, partitions=1)
    async with running_consumer(router_of(handler), **conf):
        await wait_until(lambda: settled(case), timeout=30, what="every event acknowledged")
    assert await dead_letters(case) == []
    assert await effect_counts(case.pg, case.schema, "g") == dict.fromkeys(ids, 1)


async def test_set_constraints_all_in_a_handler_is_refused_with_what_to_do(case: Case) -> None:
    """`SET CONSTRAINTS ALL IMMEDIATE` would fire the commit guard early: the event fails with a
    message saying to name the constraints instead, and nothing of it is applied."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert_effect(ctx, case.schema)
        await ctx.db.execute("SET CONSTRAINTS ALL IMMEDIATE")

    await publish(case.redis, case.prefix, 2)
    conf = consumer_settings(case, max_attempts=1, partitions=1)
    async with running_consumer(router_of(handler), **conf):
        await wait_until(lambda: settled(case), timeout=30, what="every event acknowledged")
    dead = await dead_letters(case)
    assert len(dead) == 2
    assert all(b"name the constraints to check" in d[wire.DL_ERROR] for d in dead)
    assert await effect_counts(case.pg, case.schema, "g") == {}


async def test_a_deferred_constraint_violated_at_commit_does_not_block_the_stream(
    case: Case,
) -> None:
    """The application's schema has a DEFERRABLE INITIALLY DEFERRED foreign key; one event's
    handler writes a row that violates it. The violation surfaces at the consumer's COMMIT: the
    event fails like any handler failure (and is dead-lettered after its attempts), and every
    other event of its lane is applied once."""
    await create_effects(case.pg, case.schema)
    await case.pg.execute(f"CREATE TABLE {case.schema}.parents (id text PRIMARY KEY)")
    await case.pg.execute(
        f"CREATE TABLE {case.schema}.children (parent text REFERENCES {case.schema}.parents "
        "DEFERRABLE INITIALLY DEFERRED)"
    )
    await case.pg.execute(
        f"INSERT INTO {case.schema}.parents SELECT 'agg' || i FROM generate_series(0, 9) i "
        "WHERE i <> 3"
    )

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await ctx.db.execute(f"INSERT INTO {case.schema}.children VALUES ($1)", ctx.aggregate_id)
        await insert_effect(ctx, case.schema)

    ids = await publish(case.redis, case.prefix, 10)
    conf = consumer_settings(case, max_attempts=2, partitions=1, db_backoff_max=0.5)
    async with running_consumer(router_of(handler), **conf):
        await wait_until(lambda: settled(case), timeout=20, what="every event settled")
    counts = await effect_counts(case.pg, case.schema, "g")
    ((dead,),) = [await dead_letters(case)]
    assert dead[wire.F_EVENT_ID] == ids[3].encode()
    assert dead[wire.DL_ERROR_CLASS] == b"ForeignKeyViolationError"
    assert counts == {i: 1 for n, i in enumerate(ids) if n != 3}


async def test_a_deferred_constraint_trigger_failing_at_commit_is_a_handler_failure(
    case: Case,
) -> None:
    """A deferred constraint trigger (CREATE CONSTRAINT TRIGGER ... DEFERRABLE INITIALLY
    DEFERRED, the usual way to check a cross-row invariant) raises its own error (P0001, not an
    integrity violation) at the consumer's COMMIT for one event's row: that event fails like
    any handler failure and ends as a dead letter, rather than the part being retried as if the
    database were down (and the topic stopping); every other event is applied once."""
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
    ((dead,),) = [await dead_letters(case)]
    assert dead[wire.F_EVENT_ID] == ids[3].encode()
    assert dead[wire.DL_ERROR_CLASS] == b"RaiseError"
