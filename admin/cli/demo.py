"""`conveyor demo`: the pipeline end to end on the local services, with failures to look at."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from admin import migrations
from admin.catalog import Catalog, ConsumerCatalog, DeadLetterRecord
from consumers import Consumer, ConsumerSettings, EventContext, Reject, Retry, Router
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, Relay, RelaySettings, enqueue_many

SCHEMA = "identity"
TOPIC = "identity"
GROUP = "mailer"

router = Router()
"""The demo's handlers: a mailer that welcomes users and confirms verified addresses."""


@router.handler(events_pb2.UserRegistered, topic=TOPIC)
async def welcome(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
    if "@" not in event.email:
        raise Reject(f"cannot mail {event.email!r}: not an email address")
    await ctx.db.execute(
        f"INSERT INTO {SCHEMA}.demo_mail (user_id, kind) VALUES ($1, 'welcome')", event.user_id
    )


@router.handler(events_pb2.EmailVerified, topic=TOPIC)
async def confirm(event: events_pb2.EmailVerified, ctx: EventContext) -> None:
    known = await ctx.db.fetchval(
        f"SELECT 1 FROM {SCHEMA}.demo_mail WHERE user_id = $1 AND kind = 'welcome'", event.user_id
    )
    if not known:
        raise Retry(f"user {event.user_id} not welcomed yet", delay=0.2)
    await ctx.db.execute(
        f"INSERT INTO {SCHEMA}.demo_mail (user_id, kind) VALUES ($1, 'confirmed')", event.user_id
    )


@router.handler(events_pb2.UserDeleted, topic=TOPIC)
async def forget(event: events_pb2.UserDeleted, ctx: EventContext) -> None:
    await ctx.db.execute(f"DELETE FROM {SCHEMA}.demo_mail WHERE user_id = $1", event.user_id)


def demo_events(run: str, n: int) -> list[NewEvent]:
    """`n` events of one run: every 25th user has a broken address (rejected), every 40th
    verification names a user who never registered (retried, then a dead letter)."""
    out: list[NewEvent] = []
    for i in range(n):
        user = f"{run}-u{i}"
        if i % 3 == 0:
            email = f"user{i}.example.com" if i % 25 == 0 else f"user{i}@example.com"
            out.append(
                NewEvent(
                    events_pb2.UserRegistered(user_id=user, email=email), "user", user, topic=TOPIC
                )
            )
        elif i % 3 == 1:
            target = f"{run}-ghost{i}" if i % 40 == 1 else f"{run}-u{i - 1}"
            out.append(
                NewEvent(events_pb2.EmailVerified(user_id=target), "user", target, topic=TOPIC)
            )
        else:
            out.append(
                NewEvent(
                    events_pb2.UserDeleted(user_id=f"{run}-gone{i}"),
                    "user",
                    f"{run}-gone{i}",
                    topic=TOPIC,
                )
            )
    return out


async def run(database_url: str, redis_url: str, *, events: int, key_prefix: str) -> int:
    """Run the demo; returns how many dead letters it produced."""
    console = Console(stderr=True)
    console.print(f"[bold]Conveyor demo[/]: migrating schema {SCHEMA} ...")
    await asyncio.to_thread(migrations.upgrade, database_url, SCHEMA)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        await pool.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.demo_mail (user_id text NOT NULL, "
            "kind text NOT NULL, sent_at timestamptz NOT NULL DEFAULT now())"
        )
        run_id = uuid.uuid4().hex[:6]
        batch = demo_events(run_id, events)
        async with _pipeline(database_url, redis_url, key_prefix):
            async with pool.acquire() as conn, conn.transaction():
                await enqueue_many(conn, batch, schema=SCHEMA)
            console.print(f"produced {len(batch)} events (run {run_id}) in one transaction")
            catalog = Catalog(pool, key_prefix)
            event_ids = await _run_events(pool, run_id)
            await _watch(pool, catalog, event_ids, console)
        return await _summary(catalog, event_ids)
    finally:
        await pool.close()


class _pipeline:
    """A relay and a `mailer` consumer group running in this process."""

    def __init__(self, database_url: str, redis_url: str, key_prefix: str) -> None:
        common: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": redis_url,
            "key_prefix": key_prefix,
        }
        self._relay = Relay(RelaySettings(schemas=(SCHEMA,), poll_interval=0.1, **common))
        self._consumer = Consumer(
            router,
            ConsumerSettings(
                group=GROUP,
                topics=(TOPIC,),
                ledger_schema=SCHEMA,
                max_attempts=3,
                retry_backoff=0.2,
                retry_backoff_max=0.5,
                block=0.1,
                **common,
            ),
            catalog=ConsumerCatalog,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> None:
        await self._relay.start()
        await self._consumer.start()
        self._tasks = [
            asyncio.create_task(self._relay.run()),
            asyncio.create_task(self._consumer.run()),
        ]

    async def __aexit__(self, *exc: object) -> None:
        self._relay.stop()
        self._consumer.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._consumer.close()
        await self._relay.close()


async def _run_events(pool: asyncpg.Pool, run_id: str) -> list[uuid.UUID]:
    rows = await pool.fetch(
        f"SELECT event_id FROM {SCHEMA}.outbox WHERE aggregate_id LIKE $1", f"{run_id}-%"
    )
    return [r[0] for r in rows]


async def _settled(pool: asyncpg.Pool, catalog: Catalog, event_ids: list[uuid.UUID]) -> int:
    applied = await pool.fetchval(
        f"SELECT count(*) FROM {SCHEMA}.event_ledger WHERE consumer_group = $1 "
        "AND event_id = ANY($2::uuid[]) AND processing_result IN ('success', 'skipped')",
        GROUP,
        event_ids,
    )
    dead = await catalog.dead_letters_of_events(event_ids)
    return int(applied) + len({d.event_id for d in dead if d.group == GROUP})


async def _watch(
    pool: asyncpg.Pool, catalog: Catalog, event_ids: list[uuid.UUID], console: Console
) -> None:
    columns = (TextColumn("relay → consumer"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("settled", total=len(event_ids))
        async with asyncio.timeout(120):
            while (done := await _settled(pool, catalog, event_ids)) < len(event_ids):
                progress.update(task, completed=done)
                await asyncio.sleep(0.2)
        progress.update(task, completed=len(event_ids))


async def _summary(catalog: Catalog, event_ids: list[uuid.UUID]) -> int:
    console = Console()
    dead = [d for d in await catalog.dead_letters_of_events(event_ids) if d.topic == TOPIC]
    kinds: dict[tuple[str, str], list[DeadLetterRecord]] = {}
    for d in dead:
        kinds.setdefault((d.reason, f"{d.error_class}: {d.error_message}"), []).append(d)
    table = Table(title=f"dead letters of this run (topic {TOPIC}, group {GROUP})")
    for column in ("reason", "error", "count", "example entry"):
        table.add_column(column)
    for (reason, error), letters in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        table.add_row(reason, error, str(len(letters)), min(d.entry_id for d in letters))
    console.print(table)
    console.print(
        f"full report: conveyor dlq report --stream {TOPIC}.dlq --hours 1 --target 127.0.0.1:50052"
    )
    if dead:
        console.print(
            "\nTo reprocess a dead letter, run a consumer of the group and ask it:\n"
            f"  conveyor consume --group {GROUP} --router admin.cli.demo:router "
            f"--ledger-schema {SCHEMA} --allow-unauthenticated &\n"
            f"  conveyor dlq reprocess --stream {TOPIC}.dlq --id {dead[0].entry_id} "
            "--target 127.0.0.1:50052"
        )
    return len(dead)
