"""`conveyor verify`: check that every event of an outbox window reached each consumer group.

Exit codes: 0 nothing lost; 1 an event was lost (published, and neither applied, dead-lettered nor
in flight for a group); 2 bad input: a flag, a group no registry row or stream has, or a selected
group whose ledger schema is unknown; 6 the schema is not migrated to head; 7 PostgreSQL or Redis
did not answer or answered with an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from admin.cli.consume import CONSUMER
from admin.cli.durations import parse_duration, parse_since
from admin.cli.options import (
    DEFAULT_DATABASE_URL,
    DEFAULT_PREFIX,
    DEFAULT_REDIS_URL,
    DEFAULT_SCHEMA,
    EXIT_FAILURE,
    EXIT_PRECONDITION,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    DatabaseUrl,
    KeyPrefix,
    RedisUrl,
    Schema,
    fail,
    redact,
)
from admin.errors import AdminError, DatabaseUnavailable, InvalidInput, SchemaNotReady
from conveyor import database, wire

if TYPE_CHECKING:
    from admin.verify import Report, Request, Selection

MAX_EXAMPLES = 1000
EXIT_HELP = (
    "Exit codes: 0 nothing lost; 1 an event lost; 2 bad input, an unknown group, or a selected "
    "group whose ledger is unknown; 6 the schema not at head; 7 PostgreSQL or Redis did not answer."
)
"""The `--help` epilog of `conveyor verify`."""


def verify(
    since: Annotated[
        str,
        typer.Option(
            help="Verify the outbox rows published at or after this time, and those created "
            "since and not published yet: ISO 8601 or how long ago (e.g. 1h, 30m)."
        ),
    ] = "1h",
    group: Annotated[
        list[str] | None,
        typer.Option(
            help="Only this consumer group; repeatable. Default: every group of the deployment "
            "(registered members, and the groups of the topics' streams)."
        ),
    ] = None,
    schema: Schema = DEFAULT_SCHEMA,
    topic: Annotated[str | None, typer.Option(help="Only this topic.")] = None,
    ledger_schema: Annotated[
        list[str] | None,
        typer.Option(
            help="GROUP=SCHEMA: the ledger schema of a group, over what the registry says; a "
            "plain SCHEMA is the ledger of every group no registered member describes (a stopped "
            "group). Repeatable."
        ),
    ] = None,
    ledger_retention: Annotated[
        str,
        typer.Option(
            CONSUMER.flag("ledger_retention"),
            envvar=CONSUMER.envvar("ledger_retention"),
            help="The groups' --ledger-retention: an event created before it with no ledger row "
            "and no stream entry is unknown (its row may have been deleted), not lost.",
        ),
    ] = CONSUMER.default("ledger_retention"),
    examples: Annotated[
        int, typer.Option(help=f"Example event ids shown per class and group (0-{MAX_EXAMPLES}).")
    ] = 5,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    redis_url: RedisUrl = DEFAULT_REDIS_URL,
    key_prefix: KeyPrefix = DEFAULT_PREFIX,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check an outbox window against each consumer group: every event applied, dead-lettered or
    in flight, none lost.

    Read-only: the outbox is read in pages of 5,000 rows (30 s statement timeout), the streams in
    pages of 1,000 entries; nothing is locked. Each exactly-once group's events are counted as
    applied, dead-lettered (by the dead letter's state), in flight (unpublished, undelivered or
    pending), unknown (trimmed from the stream, or older than the ledger retention) or lost;
    at-least-once groups are listed with their lag, as they keep no ledger to verify.
    """
    try:
        request = _request(
            since=since,
            groups=group or [],
            schema=schema,
            topic=topic,
            ledger_schemas=ledger_schema or [],
            ledger_retention=ledger_retention,
            examples=examples,
            key_prefix=key_prefix,
        )
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    report = _run(database_url, redis_url, request, quiet=as_json)
    from admin.cli import verify_output

    if as_json:
        verify_output.print_json_report(report)
    else:
        verify_output.print_report(report)
    if report.lost:
        raise typer.Exit(EXIT_FAILURE)


def _request(
    *,
    since: str,
    groups: Sequence[str],
    schema: str,
    topic: str | None,
    ledger_schemas: Sequence[str],
    ledger_retention: str,
    examples: int,
    key_prefix: str,
) -> Request:
    """The request the options make; ValueError naming the option at fault."""
    from admin.verify import Request

    try:
        moment = parse_since(since)
    except ValueError as exc:
        raise ValueError(f"--since: {exc}") from None
    if not 0 <= examples <= MAX_EXAMPLES:
        raise ValueError(f"--examples must be 0-{MAX_EXAMPLES}, got {examples}")
    for name in groups:
        wire.validate_name("group", name)
    if topic is not None:
        wire.validate_topic(topic)
    return Request(
        schema=database.validate_schema(schema),
        key_prefix=wire.validate_prefix(key_prefix),
        since=moment,
        topic=topic,
        selection=_selection(groups, ledger_schemas),
        examples=examples,
        ledger_retention=parse_duration(ledger_retention, CONSUMER.flag("ledger_retention")),
    )


def _selection(groups: Sequence[str], ledger_schemas: Sequence[str]) -> Selection:
    from admin.verify import Selection

    mapping: dict[str, str] = {}
    default: str | None = None
    for value in ledger_schemas:
        name, _, schema = value.rpartition("=")
        what = f"invalid --ledger-schema {value!r}"
        try:
            database.validate_schema(schema)
            if name:
                wire.validate_name("group", name)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}; use GROUP=SCHEMA or SCHEMA") from None
        if not name and default is not None and default != schema:
            raise ValueError(f"{what}: a plain SCHEMA is given once (also {default!r})")
        if name and mapping.get(name, schema) != schema:
            raise ValueError(f"{what}: group {name!r} is given {mapping[name]!r} too")
        if name:
            mapping[name] = schema
        else:
            default = schema
    return Selection(tuple(dict.fromkeys(groups)), mapping, default)


def _run(database_url: str, redis_url: str, request: Request, *, quiet: bool) -> Report:
    """Run the verifier, every failure turned into its exit code and one line on stderr."""
    import asyncpg
    from redis.exceptions import RedisError

    from admin import migrations

    try:
        asyncio.run(migrations.ensure_at_head(database_url, request.schema))
    except SchemaNotReady as exc:
        fail(exc.message, EXIT_PRECONDITION)
    except DatabaseUnavailable as exc:
        fail(exc.message, EXIT_UNAVAILABLE)
    except AdminError as exc:
        fail(exc.message, EXIT_USAGE)
    try:
        return asyncio.run(_verify(database_url, redis_url, request, quiet=quiet))
    except InvalidInput as exc:
        fail(exc.message, EXIT_USAGE)
    except RedisError as exc:
        fail(f"Redis at {redact(redis_url)}: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        fail(f"PostgreSQL or Redis: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)


async def _verify(database_url: str, redis_url: str, request: Request, *, quiet: bool) -> Report:
    from admin.cli.verify_output import progress_display
    from admin.verify import tables, verify
    from conveyor import redis_client

    pool = await tables.connect(database_url)
    client = await redis_client.open(redis_url)
    try:
        async with asyncio.timeout(redis_client.COMMAND_TIMEOUT):
            await client.ping()  # unreachable is an answer of its own, whatever the window holds
        with progress_display(request.since, quiet=quiet) as progress:
            return await verify(pool, client, request, progress)
    finally:
        await client.aclose()
        await pool.close()
