"""The `conveyor` command line: one console script, a sub-command per job."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from admin.cli import (
    bench,
    consume,
    dlq,
    help_layout,
    migrate,
    monitoring,
    options,
    relay,
    token,
    topic,
    verify,
)
from admin.errors import AdminError

help_layout.install()  # `--help` keeps every option and variable name whole at 80 columns

app = typer.Typer(
    name="conveyor",
    help="Reliable domain events: PostgreSQL outbox -> Redis Streams -> exactly-once consumers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(migrate.app, name="migrate", help="Create and upgrade Conveyor's tables.")
app.add_typer(relay.app, name="relay")
app.command("consume")(consume.consume)
app.command("bench")(bench.bench)
app.add_typer(dlq.app, name="dlq")
monitoring.register(app)
app.command("verify", epilog=verify.EXIT_HELP)(verify.verify)
app.add_typer(token.app, name="token")
app.add_typer(topic.app, name="topic")

DISTRIBUTION = "conveyor-events"


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib import metadata

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown (not installed as a package)"
    typer.echo(f"conveyor {version}")
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help=f"Print the installed {DISTRIBUTION} version and exit.",
        ),
    ] = False,
) -> None:
    """Reliable domain events: PostgreSQL outbox -> Redis Streams -> exactly-once consumers."""


@app.command("demo")
def demo(
    database_url: options.DatabaseUrl = options.DEFAULT_DATABASE_URL,
    redis_url: options.RedisUrl = options.DEFAULT_REDIS_URL,
    key_prefix: Annotated[
        str,
        typer.Option(
            "--key-prefix",
            envvar="CONVEYOR_DEMO_KEY_PREFIX",
            help="The demo's Redis key prefix, which also names its deployment in the catalog: "
            "never an application's (CONVEYOR_KEY_PREFIX is not read).",
        ),
    ] = "conveyor-demo",
    schema: Annotated[
        str,
        typer.Option(
            "--schema",
            envvar="CONVEYOR_DEMO_SCHEMA",
            help="The demo's schema: outbox, ledger and its mail tables (CONVEYOR_SCHEMA is not "
            "read).",
        ),
    ] = "conveyor_demo",
    events: Annotated[int, typer.Option(help="Events to produce (1-100000).")] = 300,
    time_limit: Annotated[
        float | None,
        typer.Option(
            help="Seconds to wait for the events to settle before failing with what is missing. "
            "Default: 60, plus 1 per 20 events."
        ),
    ] = None,
) -> None:
    """Run a relay and a consumer group on demo events (some fail) under names of the demo's
    own (schema conveyor_demo, topic demo, group demo-mailer, key prefix conveyor-demo), show
    progress, then its dead letters and the commands that handle them.

    Exits 1 when the events do not settle within --time-limit, naming what did not arrive; 2
    when --schema holds an application's tables or events (the demo would take its events).
    """
    import asyncpg
    from redis.exceptions import RedisError

    from admin.cli import demo as demo_run
    from admin.cli.demo_guard import NotTheDemosSchema
    from conveyor import database, wire

    if not 1 <= events <= 100_000:
        options.fail(f"--events must be 1-100000, got {events}", options.EXIT_USAGE)
    if time_limit is not None and time_limit <= 0:
        options.fail(f"--time-limit must be positive, got {time_limit:g}", options.EXIT_USAGE)
    try:
        names = demo_run.Names(
            database_url,
            redis_url,
            schema=database.validate_schema(schema),
            key_prefix=wire.validate_prefix(key_prefix),
        )
    except ValueError as exc:
        options.fail(str(exc), options.EXIT_USAGE)
    log = demo_run.log_to_file()
    limit = time_limit if time_limit is not None else 60 + events / 20
    try:
        asyncio.run(demo_run.run(names, events=events, time_limit=limit, log=log))
    except NotTheDemosSchema as exc:
        options.fail(exc.message, options.EXIT_USAGE)
    except AdminError as exc:
        options.fail(exc.message)
    except (OSError, asyncpg.PostgresError, RedisError) as exc:
        options.fail(f"the demo needs PostgreSQL and Redis: {exc}")


def main() -> None:
    """Entry point of the `conveyor` console script."""
    app()
