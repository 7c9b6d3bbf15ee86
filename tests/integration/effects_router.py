"""A router for `conveyor consume` processes started by tests, configured by environment:

TEST_EFFECTS_SCHEMA  schema holding the effects table (required)
TEST_HANDLER_SLEEP   seconds each handler call sleeps inside its transaction (default 0)
TEST_HANDLER_BLOCK   seconds each handler call blocks the event loop (time.sleep; default 0)
TEST_REJECT_FILE     while this file exists, events of aggregate "agg0" are rejected
TEST_TOPIC           the topic handled (default identity)
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from consumers import EventContext, Reject, Router
from conveyor.identity.v1 import events_pb2

router = Router()
_SCHEMA = os.environ.get("TEST_EFFECTS_SCHEMA", "public")
_SLEEP = float(os.environ.get("TEST_HANDLER_SLEEP", "0"))
_BLOCK = float(os.environ.get("TEST_HANDLER_BLOCK", "0"))
_REJECT_FILE = os.environ.get("TEST_REJECT_FILE")
_TOPIC = os.environ.get("TEST_TOPIC", "identity")


@router.handler(events_pb2.UserRegistered, topic=_TOPIC)
async def on_registered(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    # A stat per agg0 event, in a test router: not worth a thread.
    if _REJECT_FILE and ctx.aggregate_id == "agg0" and os.path.exists(_REJECT_FILE):  # noqa: ASYNC240
        raise Reject("agg0 is refused for now")
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
    if _BLOCK:
        time.sleep(_BLOCK)  # noqa: ASYNC251 - the bug simulated: blocking work in a handler
