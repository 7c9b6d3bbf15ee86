"""The compose stack's demo application, run from Conveyor's image (mounted at /app).

`python /app/demo_app.py` is the producer: it writes a batch of the demo's events (`conveyor
demo`'s: registrations, verifications, deletions, some with broken addresses that end as dead
letters) into the outbox of schema conveyor_demo every few seconds, in one transaction each.
`conveyor consume --router demo_app:router` (with /app on PYTHONPATH) is the second consumer
group: an audit log of every event, beside the demo's own mailer (`admin.cli.demo:router`).
"""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg

from admin.cli import demo
from consumers import EventContext, Router
from conveyor.identity.v1 import events_pb2
from relay import enqueue_many

SCHEMA = os.environ.get("CONVEYOR_SCHEMA", demo.SCHEMA)
EVENTS = int(os.environ.get("DEMO_EVENTS_PER_BATCH", "30"))
INTERVAL = float(os.environ.get("DEMO_INTERVAL_SECONDS", "5"))

router = Router()
"""The audit group's handlers: one row per event and group, in the event's transaction."""


async def _audit(ctx: EventContext) -> None:
    await ctx.db.execute(
        f"INSERT INTO {SCHEMA}.demo_audit (event_id, event_type, aggregate_id) VALUES ($1, $2, $3)",
        ctx.event_id,
        ctx.event_type,
        ctx.aggregate_id,
    )


@router.handler(events_pb2.UserRegistered, topic=demo.TOPIC)
async def registered(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    await _audit(ctx)


@router.handler(events_pb2.EmailVerified, topic=demo.TOPIC)
async def verified(event: events_pb2.EmailVerified, ctx: EventContext) -> None:
    await _audit(ctx)


@router.handler(events_pb2.UserDeleted, topic=demo.TOPIC)
async def deleted(event: events_pb2.UserDeleted, ctx: EventContext) -> None:
    await _audit(ctx)


TABLES = (
    "CREATE TABLE IF NOT EXISTS {s}.demo_mail (user_id text NOT NULL, kind text NOT NULL, "
    "sent_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS {s}.demo_outage (user_id text PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS {s}.demo_audit (event_id text PRIMARY KEY, event_type text "
    "NOT NULL, aggregate_id text NOT NULL, seen_at timestamptz NOT NULL DEFAULT now())",
)
"""The handlers' tables (`conveyor migrate up --schema conveyor_demo` made the schema)."""


async def produce() -> None:
    """Create the handlers' tables, then write a batch of demo events every INTERVAL seconds."""
    conn = await asyncpg.connect(os.environ["CONVEYOR_DATABASE_URL"])
    try:
        for statement in TABLES:
            await conn.execute(statement.format(s=SCHEMA))
        while True:
            run = uuid.uuid4().hex[:6]
            async with conn.transaction():
                ids = await enqueue_many(conn, demo.demo_events(run, EVENTS, SCHEMA), schema=SCHEMA)
            print(f"produced {len(ids)} events: run={run} schema={SCHEMA}", flush=True)
            await asyncio.sleep(INTERVAL)
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(produce())
