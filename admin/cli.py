"""The `conveyor` command line: one console script, a sub-command per job."""

from __future__ import annotations

import typer

from admin import consume_cli, dlq_cli, migrate_cli, ops_cli, relay_cli

app = typer.Typer(
    name="conveyor",
    help="Reliable domain events: PostgreSQL outbox -> Redis Streams -> exactly-once consumers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(migrate_cli.app, name="migrate", help="Create and upgrade Conveyor's tables.")
app.add_typer(relay_cli.app, name="relay")
app.command("consume")(consume_cli.consume)
app.add_typer(dlq_cli.app, name="dlq")
ops_cli.register(app)


def main() -> None:
    """Entry point of the `conveyor` console script."""
    app()
