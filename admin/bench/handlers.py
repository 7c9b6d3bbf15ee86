"""The routers `conveyor bench` runs its `conveyor consume` processes with (`--router
admin.bench.handlers:NAME`). Each writes to the `bench_effects` table of the schema named by
CONVEYOR_BENCH_SCHEMA, the scenario's scratch schema."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from consumers import EventContext, Router
from conveyor import database
from conveyor.identity.v1 import events_pb2

TOPIC = "bench"
_SCHEMA = database.validate_schema(os.environ.get("CONVEYOR_BENCH_SCHEMA", "bench"))
_EFFECTS = f"{_SCHEMA}.bench_effects"
_IO_WAIT = float(os.environ.get("CONVEYOR_BENCH_IO_WAIT", "0.005"))

per_event = Router()
"""Exactly-once form of most applications: one INSERT per event through `ctx.db`."""


@per_event.handler(events_pb2.UserRegistered, topic=TOPIC)
async def _insert_one(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    await ctx.db.execute(f"INSERT INTO {_EFFECTS} (event_id) VALUES ($1)", ctx.event_id)


batch = Router()
"""Exactly-once batch form: one `INSERT ... unnest` per call."""


@batch.batch_handler(events_pb2.UserRegistered, topic=TOPIC)
async def _insert_many(items: list[tuple[Any, EventContext]], db: Any) -> None:
    await db.execute(
        f"INSERT INTO {_EFFECTS} (event_id) SELECT unnest($1::uuid[])",
        [ctx.event_id for _, ctx in items],
    )


noop = Router()
"""At-least-once form with nothing to do: what the runtime itself costs."""


@noop.handler(events_pb2.UserRegistered, topic=TOPIC)
async def _nothing(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    return None


latency = Router()
"""The per-event form that also records when the handler began (time.monotonic_ns(), the
clock every process on the machine shares), for commit-to-handler latency."""


@latency.handler(events_pb2.UserRegistered, topic=TOPIC)
async def _stamp(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    began = time.monotonic_ns()
    await ctx.db.execute(
        f"INSERT INTO {_EFFECTS} (event_id, handled_ns) VALUES ($1, $2)", ctx.event_id, began
    )


io_wait = Router()
"""A handler bound by I/O, as one calling another service is: it waits CONVEYOR_BENCH_IO_WAIT
seconds (5 ms by default) per event, then does the per-event form's INSERT. A lane applies its
events one after the other, so a member applies at most lanes / wait events per second."""


@io_wait.handler(events_pb2.UserRegistered, topic=TOPIC)
async def _call_then_insert(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    await asyncio.sleep(_IO_WAIT)
    await ctx.db.execute(f"INSERT INTO {_EFFECTS} (event_id) VALUES ($1)", ctx.event_id)
