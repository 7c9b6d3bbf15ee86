"""A router for `conveyor consume` processes started by tests, configured by environment:

TEST_EFFECTS_SCHEMA  schema holding the effects table (required)
TEST_HANDLER_SLEEP   seconds each handler call sleeps inside its transaction (default 0)
"""

from __future__ import annotations

import asyncio
import os
import uuid

from consumers import EventContext, Router
from conveyor.identity.v1 import events_pb2

router = Router()
_SCHEMA = os.environ.get("TEST_EFFECTS_SCHEMA", "public")
_SLEEP = float(os.environ.get("TEST_HANDLER_SLEEP", "0"))


@router.handler(events_pb2.UserRegistered, topic="identity")
async def on_registered(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    await ctx.db.execute(
        f"INSERT INTO {_SCHEMA}.effects (consumer_group, event_id, aggregate_id, attempt) "
        "VALUES ($1, $2, $3, $4)",
        ctx.group,
        uuid.UUID(ctx.event_id),
        ctx.aggregate_id,
        ctx.attempt,
    )
    if _SLEEP:
        await asyncio.sleep(_SLEEP)
