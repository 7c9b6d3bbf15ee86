"""The handlers of the torture suite's `conveyor consume` processes, and the table they write.

Start a consumer with `--router tests.torture.router:router` (the Pipeline does). Each delivery
that applies appends one row to `{schema}.effects` through `ctx.db`, so in exactly-once mode the
row commits with the group's ledger row, once per (group, event); the table has no unique key, so
a second effect shows as a second row. A row records what the checker needs to judge it:

    seq             apply order (identity, taken at INSERT; one aggregate's events are inserted
                    in their apply order within one consumer)
    consumer_group  the group that applied it (ctx.group)
    event_id        the event (ctx.event_id)
    aggregate_id    its aggregate
    attempt         ctx.attempt of the delivery
    stream          the stream the delivery came from: the topic stream, or the group's retry
                    stream when a reprocessed dead letter is applied
    entry_id        the delivery's entry id in that stream
    pid             the consumer process that applied it
    applied_at      clock_timestamp() at INSERT

Configured by environment, read once at import:

TORTURE_EFFECTS_SCHEMA  schema holding `effects` (required; create it with `create_effects`)
TORTURE_TOPIC           topic the handler is declared for (default `torture`)
TORTURE_POISON_GROUP    group whose poison events fail permanently (`consumers.Reject`: a dead
                        letter at once); other groups apply them normally. Unset: no poison rule.
TORTURE_POISON_FIX      path of the "fix": once this file exists, poison events apply in that
                        group too (a reprocess after the fix then succeeds)
TORTURE_HANDLER_SLEEP   seconds each delivery sleeps after its INSERT, inside the transaction, to
                        widen crash windows (default 0)

An event is poison when its payload's `display_name` is `poison` (the workload marks a seeded
share of events so, see `WorkloadConfig.poison_share`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from consumers import EventContext, Reject, Router
from conveyor.identity.v1 import events_pb2

POISON = "poison"
"""`display_name` of a poison event's UserRegistered payload."""

SCHEMA_ENV = "TORTURE_EFFECTS_SCHEMA"
TOPIC_ENV = "TORTURE_TOPIC"
POISON_GROUP_ENV = "TORTURE_POISON_GROUP"
POISON_FIX_ENV = "TORTURE_POISON_FIX"
SLEEP_ENV = "TORTURE_HANDLER_SLEEP"
DEFAULT_TOPIC = "torture"

_SCHEMA = os.environ.get(SCHEMA_ENV, "")
_TOPIC = os.environ.get(TOPIC_ENV, DEFAULT_TOPIC)
_POISON_GROUP = os.environ.get(POISON_GROUP_ENV, "")
_POISON_FIX = os.environ.get(POISON_FIX_ENV, "")
_SLEEP = float(os.environ.get(SLEEP_ENV, "0"))
_PID = os.getpid()

router = Router()


def effects_ddl(schema: str) -> str:
    """CREATE TABLE of `{schema}.effects` (idempotent)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {schema}.effects ("
        "seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "consumer_group text NOT NULL, event_id uuid NOT NULL, aggregate_id text NOT NULL, "
        "attempt int NOT NULL, stream text NOT NULL, entry_id text NOT NULL, pid int, "
        "applied_at timestamptz NOT NULL DEFAULT clock_timestamp()); "
        f"CREATE INDEX IF NOT EXISTS effects_event ON {schema}.effects (event_id)"
    )


async def create_effects(conn: Any, schema: str) -> None:
    """Create `{schema}.effects` on an asyncpg connection, if it is not there yet."""
    await conn.execute(effects_ddl(schema))


def _poisoned(event: events_pb2.UserRegistered, group: str) -> bool:
    if not _POISON_GROUP or group != _POISON_GROUP or event.display_name != POISON:
        return False
    # One stat per poison event, in a test router: not worth a thread.
    return not (_POISON_FIX and os.path.exists(_POISON_FIX))


@router.handler(events_pb2.UserRegistered, topic=_TOPIC)
async def on_registered(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    if not _SCHEMA:
        raise RuntimeError(f"{SCHEMA_ENV} is not set: the torture router has nowhere to write")
    if _poisoned(event, ctx.group):
        raise Reject(f"poison event for group {ctx.group} (no fix yet)")
    await ctx.db.execute(
        f"INSERT INTO {_SCHEMA}.effects (consumer_group, event_id, aggregate_id, attempt, "
        "stream, entry_id, pid) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ctx.group,
        uuid.UUID(ctx.event_id),
        ctx.aggregate_id,
        ctx.attempt,
        ctx.stream,
        ctx.entry_id,
        _PID,
    )
    if _SLEEP:
        await asyncio.sleep(_SLEEP)
