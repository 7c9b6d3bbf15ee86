"""`conveyor relay backfill`: kept outbox events of a time window re-sent to one consumer group
only, through its retry stream, so a group created later catches up on them."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from admin.cli.durations import parse_since
from admin.cli.options import (
    DEFAULT_DATABASE_URL,
    DEFAULT_PREFIX,
    DEFAULT_REDIS_URL,
    DEFAULT_SCHEMA,
    EXIT_PRECONDITION,
    EXIT_USAGE,
    DatabaseUrl,
    KeyPrefix,
    RedisUrl,
    Schema,
    fail,
)
from admin.errors import AdminError
from conveyor import database, wire

AT_LEAST_ONCE = "at-least-once"

if TYPE_CHECKING:
    from relay.backfill import BackfillResult


def window(since: str, until: str | None) -> tuple[datetime, datetime | None]:
    """(since, until) as typed on the command line; ValueError naming the flag."""
    try:
        start = parse_since(since)
    except ValueError as exc:
        raise ValueError(f"--since: {exc}") from None
    if until is None:
        return start, None
    try:
        end = parse_since(until)
    except ValueError as exc:
        raise ValueError(f"--until: {exc}") from None
    if end <= start:
        raise ValueError(
            f"--until {until!r} ({end.isoformat()}) must be after --since {since!r} "
            f"({start.isoformat()})"
        )
    return start, end


def backfill(
    topic: Annotated[str, typer.Option(help="The topic whose events are sent.")],
    group: Annotated[
        str, typer.Option(help="The one consumer group that gets them (it must exist).")
    ],
    since: Annotated[
        str,
        typer.Option(help="Send rows published at or after this time (ISO 8601 or e.g. 2h)."),
    ],
    until: Annotated[
        str | None,
        typer.Option(help="Only rows published before this time (ISO 8601 or e.g. 30m)."),
    ] = None,
    schema: Schema = DEFAULT_SCHEMA,
    dry_run: Annotated[
        bool, typer.Option(help="List what would be sent, per stream; send nothing.")
    ] = False,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    redis_url: RedisUrl = DEFAULT_REDIS_URL,
    key_prefix: KeyPrefix = DEFAULT_PREFIX,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Send kept outbox events of a time window to one consumer group only (its retry stream),
    e.g. a group created after they were published and trimmed. Other groups see nothing."""
    from admin import migrations
    from relay.backfill import GroupMissing

    try:
        start, end = window(since, until)
        database.validate_schema(schema)
        wire.validate_prefix(key_prefix)
        wire.validate_topic(topic)
        wire.validate_name("group", group)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        asyncio.run(migrations.ensure_at_head(database_url, schema))
    except AdminError as exc:
        fail(exc.message)
    run = _backfill(database_url, redis_url, key_prefix, schema, topic, group, start, end, dry_run)
    try:
        result, mode = asyncio.run(run)
    except GroupMissing as exc:
        fail(str(exc), EXIT_PRECONDITION)
    _print(result, topic, group, mode, start, end, dry_run, as_json)


def _print(
    result: BackfillResult,
    topic: str,
    group: str,
    mode: str | None,
    since: datetime,
    until: datetime | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    if as_json:
        summary = {
            "topic": topic,
            "group": group,
            "mode": mode,
            "since": since.isoformat(),
            "until": None if until is None else until.isoformat(),
            "dry_run": dry_run,
            "matched": result.matched,
            "sent": result.sent,
            "by_stream": dict(result.by_stream),
            "first": result.first,
            "last": result.last,
        }
        print(json.dumps(summary))
        return
    verb = "would send" if dry_run else "sent"
    window = f"since {since.isoformat()}" + ("" if until is None else f" until {until.isoformat()}")
    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"{verb} {result.matched} events of topic {topic} published {window} to group {group}",
        markup=False,
    )
    for stream, n in sorted(result.by_stream.items()):
        span = f"events {result.first[stream]} .. {result.last[stream]}"
        console.print(f"  {stream}: {n} ({span})", markup=False)
    if mode == AT_LEAST_ONCE and result.matched:
        console.print(
            f"group {group} is at-least-once (no ledger): it applies again every event of the "
            "window it has applied already",
            markup=False,
        )


async def _backfill(
    database_url: str,
    redis_url: str,
    prefix: str,
    schema: str,
    topic: str,
    group: str,
    since: datetime,
    until: datetime | None,
    dry_run: bool,
) -> tuple[BackfillResult, str | None]:
    """The backfill's result, and the group's mode as its registered members say (None when
    none is registered)."""
    import asyncpg

    from admin.catalog.layouts import layouts
    from admin.catalog.registry import registered_groups
    from conveyor import redis_client
    from relay.backfill import Target, backfill
    from relay.store import count_replayable

    named = database.server_settings(database_url, "relay backfill", schema)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, server_settings=named)
    client = redis_client.connect(redis_url)
    try:
        counts = {t: lay.partitions for t, lay in (await layouts(pool, prefix)).items()}
        modes = {
            g.mode
            for g in await registered_groups(pool, prefix)
            if (g.topic, g.group) == (topic, group)
        }
        mode = AT_LEAST_ONCE if AT_LEAST_ONCE in modes else next(iter(modes), None)
        target = Target(group, topic, prefix, counts.get(topic))
        total = await count_replayable(pool, schema, since, topic, until)
        console = Console(stderr=True)
        with Progress(
            TextColumn("backfill"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,  # off a terminal it leaves a blank line
            transient=True,
        ) as progress:
            task = progress.add_task("backfill", total=total)
            result = await backfill(
                pool,
                client,
                schema,
                target,
                since=since,
                until=until,
                dry_run=dry_run,
                on_progress=lambda n: progress.advance(task, n),
            )
            return result, mode
    finally:
        await client.aclose()
        await pool.close()
