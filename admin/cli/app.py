"""The `conveyor` command line: one console script, a sub-command per job."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from admin.cli import consume, dlq, help_layout, migrate, monitoring, options, relay, token
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
app.add_typer(dlq.app, name="dlq")
monitoring.register(app)
app.add_typer(token.app, name="token")


@app.command("demo")
def demo(
    database_url: options.DatabaseUrl = options.DEFAULT_DATABASE_URL,
    redis_url: options.RedisUrl = options.DEFAULT_REDIS_URL,
    key_prefix: options.KeyPrefix = options.DEFAULT_PREFIX,
    events: Annotated[int, typer.Option(help="Events to produce (1-100000).")] = 300,
) -> None:
    """Migrate schema `identity`, run a relay and a `mailer` consumer group on demo events (some
    fail), show progress, then the dead-letter report and how to reprocess."""
    import asyncpg
    from redis.exceptions import RedisError

    from admin.cli import demo as demo_run

    if not 1 <= events <= 100_000:
        options.fail(f"--events must be 1-100000, got {events}", options.EXIT_USAGE)
    options.setup_logging("warning")
    try:
        asyncio.run(demo_run.run(database_url, redis_url, events=events, key_prefix=key_prefix))
    except AdminError as exc:
        options.fail(exc.message)
    except (OSError, asyncpg.PostgresError, RedisError) as exc:
        options.fail(f"the demo needs PostgreSQL and Redis: {exc}")


def main() -> None:
    """Entry point of the `conveyor` console script."""
    app()
