"""A handler whose connection is lost under it is retried on a new connection without counting an
attempt (the database or the network failed, not the handler). But an event whose handler loses
its connection every time (it terminates its own backend, closes ctx.db, or runs a statement the
server kills it for) is a poison event: its attempts are still bounded, it becomes a dead letter,
and the events beside it are applied once."""

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


@pytest.mark.parametrize("how", ["server_terminates", "handler_closes", "closes_and_returns"])
async def test_an_event_that_loses_its_connection_every_time_becomes_a_dead_letter(
    case: Case, how: str
) -> None:
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert_effect(ctx, case.schema)
        if ctx.aggregate_id == "agg3":
            if how == "server_terminates":
                await ctx.db.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            elif how == "handler_closes":
                ctx.db.terminate()
                raise RuntimeError("the handler closed its own connection")
            else:
                ctx.db.terminate()  # and returns as if all went well

    ids = await publish(case.redis, case.prefix, 6)
    settings = consumer_settings(case, partitions=1, max_attempts=2, db_backoff_max=0.2)
    async with running_consumer(router_of(handler), **settings):
        await wait_until(lambda: settled(case), timeout=30, what="every event acknowledged")
    ((dead,),) = [await dead_letters(case)]
    assert dead[wire.F_EVENT_ID] == ids[3].encode()
    counts = await effect_counts(case.pg, case.schema, "g")
    assert counts == {i: 1 for n, i in enumerate(ids) if n != 3}
