"""`conveyor demo`: the pipeline end to end on the local services, with failures to look at.

The demo keeps to names of its own, which an application following the README never uses:
schema `conveyor_demo`, topic `demo`, group `demo-mailer`, key prefix `conveyor-demo` (which also
names its deployment in the shared catalog). Its relay drains only its schema and its consumer
reads only its topic, so a user's relay, consumer and `dlq` commands never see its events.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from google.protobuf.message import Message
from rich.console import Console

from admin import migrations
from admin.catalog import Catalog
from admin.cli import demo_guard, demo_summary, demo_wait
from consumers import EventContext, Reject, Retry, Router
from conveyor import database
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, enqueue_many

SCHEMA = "conveyor_demo"
TOPIC = "demo"
GROUP = "demo-mailer"
KEY_PREFIX = "conveyor-demo"
GRPC_ADDR = "127.0.0.1:50062"
"""Where the consumer the summary suggests serves AdminService: not the default 50051/50052 of
a user's relay and consumer."""
SCHEMA_HEADER = "demo-schema"
"""Event header naming the schema of the demo's tables, so `--router admin.cli.demo:router`
works for a demo run with any --schema."""

router = Router()
"""The demo's handlers: a mailer that welcomes users and confirms verified addresses."""


def _tables(ctx: EventContext) -> str:
    return database.validate_schema(ctx.headers.get(SCHEMA_HEADER, SCHEMA))


@router.handler(events_pb2.UserRegistered, topic=TOPIC)
async def welcome(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    if "@" not in event.email:
        raise Reject(f"cannot mail {event.email!r}: not an email address")
    await ctx.db.execute(
        f"INSERT INTO {_tables(ctx)}.demo_mail (user_id, kind) VALUES ($1, 'welcome')",
        event.user_id,
    )


@router.handler(events_pb2.EmailVerified, topic=TOPIC)
async def confirm(event: events_pb2.EmailVerified, ctx: EventContext) -> None:
    schema = _tables(ctx)
    down = await ctx.db.fetchval(
        f"SELECT 1 FROM {schema}.demo_outage WHERE user_id = $1", event.user_id
    )
    if down:
        raise Retry(f"mailbox of user {event.user_id} unreachable", delay=0.2)
    known = await ctx.db.fetchval(
        f"SELECT 1 FROM {schema}.demo_mail WHERE user_id = $1 AND kind = 'welcome'", event.user_id
    )
    if not known:
        raise Retry(f"user {event.user_id} not welcomed yet", delay=0.2)
    await ctx.db.execute(
        f"INSERT INTO {schema}.demo_mail (user_id, kind) VALUES ($1, 'confirmed')", event.user_id
    )


@router.handler(events_pb2.UserDeleted, topic=TOPIC)
async def forget(event: events_pb2.UserDeleted, ctx: EventContext) -> None:
    await ctx.db.execute(f"DELETE FROM {_tables(ctx)}.demo_mail WHERE user_id = $1", event.user_id)


@dataclass(frozen=True)
class Names:
    """Where one demo run works: its schema, key prefix and connections."""

    database_url: str
    redis_url: str
    schema: str = SCHEMA
    key_prefix: str = KEY_PREFIX


def broken(k: int) -> bool:
    """User k registers with an address that is not one: rejected, a dead letter at once."""
    return k % 8 == 0


def unreachable(k: int) -> bool:
    """User k's mailbox is down while the demo runs: its verification is retried until its
    attempts run out, and succeeds when reprocessed afterwards."""
    return k % 13 == 5 and not broken(k)


def demo_events(run: str, n: int, schema: str = SCHEMA) -> list[NewEvent]:
    """`n` events of one run, three per user k: registered (a broken address when `broken(k)`),
    verified (deleted instead for a broken address), and a deletion of another account."""
    headers = {SCHEMA_HEADER: schema}
    out: list[NewEvent] = []
    for i in range(n):
        k, step = divmod(i, 3)
        user = f"{run}-u{k}"
        if step == 0:
            email = f"user{k}.example.com" if broken(k) else f"user{k}@example.com"
            message: Message = events_pb2.UserRegistered(user_id=user, email=email)
        elif step == 1 and not broken(k):
            message = events_pb2.EmailVerified(user_id=user)
        else:
            user = f"{run}-u{k}" if step == 1 else f"{run}-gone{k}"
            message = events_pb2.UserDeleted(user_id=user)
        out.append(NewEvent(message, "user", user, topic=TOPIC, headers=headers))
    return out


def unreachable_users(run: str, n: int) -> list[str]:
    """The users of a run of `n` events whose verification meets the mailbox outage."""
    return [f"{run}-u{k}" for k in range((n + 1) // 3) if 3 * k + 1 < n and unreachable(k)]


async def run(names: Names, *, events: int, time_limit: float, log: Path | None = None) -> int:
    """Run the demo; returns how many dead letters it produced. Raises NotTheDemosSchema when
    `names.schema` holds an application's data, DemoStuck when the events do not settle within
    `time_limit` seconds."""
    console = Console(stderr=True)
    named = database.server_settings(names.database_url, "demo")
    conn = await asyncpg.connect(names.database_url, server_settings=named)
    try:
        await demo_guard.check_schema(conn, names.schema, TOPIC, GROUP)
    finally:
        await conn.close()
    console.print(f"[bold]Conveyor demo[/]: migrating schema {names.schema} ...")
    if log is not None:
        console.print(f"log (the failures it causes on purpose): {log}")
    await asyncio.to_thread(migrations.upgrade, names.database_url, names.schema)
    pool = await asyncpg.create_pool(
        names.database_url, min_size=1, max_size=4, command_timeout=10, server_settings=named
    )
    try:
        await _create_tables(pool, names.schema)
        async with pool.acquire() as conn:
            if stale := await demo_guard.discard_unpublished(conn, names.schema, TOPIC):
                console.print(f"discarded {stale} unpublished events of an earlier demo run")
        run_id = uuid.uuid4().hex[:6]
        outage = unreachable_users(run_id, events)
        catalog = Catalog(pool, names.key_prefix)
        async with demo_wait.Pipeline(names, router, TOPIC, GROUP) as pipeline:
            await pool.execute(
                f"INSERT INTO {names.schema}.demo_outage SELECT unnest($1::text[])", outage
            )
            batch = demo_events(run_id, events, names.schema)
            event_ids = await _produce(pool, names.schema, batch)
            console.print(
                f"produced {len(event_ids)} events (run {run_id}) in one transaction: topic "
                f"{TOPIC}, group {GROUP}, key prefix {names.key_prefix}"
            )
            watch = demo_wait.Watch(pool, catalog, pipeline, event_ids)
            await watch.until_settled(console, time_limit)
        await pool.execute(
            f"DELETE FROM {names.schema}.demo_outage WHERE user_id = ANY($1)", outage
        )  # the outage is over: the summary's reprocess succeeds
        dead = [d for d in await catalog.dead_letters_of_events(event_ids) if d.group == GROUP]
        demo_summary.show(dead, names, TOPIC, GROUP, GRPC_ADDR)
        return len(dead)
    finally:
        await pool.close()


def log_to_file() -> Path | None:
    """Send the log (WARNING and up: the retries and dead letters the demo causes on purpose) to
    conveyor-demo.log in the temporary directory, not the terminal; its path. When that file
    cannot be written, only errors are logged, to stderr, and None is returned."""
    path = Path(tempfile.gettempdir()) / "conveyor-demo.log"
    try:
        handler: logging.Handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    except OSError:
        handler = logging.StreamHandler()
    written = isinstance(handler, logging.FileHandler)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logging.WARNING if written else logging.ERROR
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return path if written else None


async def _create_tables(pool: asyncpg.Pool, schema: str) -> None:
    await pool.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.demo_mail (user_id text NOT NULL, "
        "kind text NOT NULL, sent_at timestamptz NOT NULL DEFAULT now())"
    )
    await pool.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.demo_outage (user_id text PRIMARY KEY)"
    )


async def _produce(pool: asyncpg.Pool, schema: str, batch: list[NewEvent]) -> list[uuid.UUID]:
    async with pool.acquire() as conn, conn.transaction():
        return await enqueue_many(conn, batch, schema=schema)
