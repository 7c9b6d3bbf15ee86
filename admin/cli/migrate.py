"""`conveyor migrate`: create, upgrade, downgrade and inspect Conveyor's PostgreSQL tables.

Exit codes: 0 success (and, for `check`, everything at head); 1 not at head, PostgreSQL
unreachable or a migration failed; 2 bad input (schema name, revision, database URL).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from admin.cli.options import (
    DEFAULT_DATABASE_URL,
    EXIT_FAILURE,
    EXIT_USAGE,
    DatabaseUrl,
    Schema,
    fail,
)
from admin.errors import AdminError, InvalidInput
from conveyor.database import CATALOG_SCHEMA, DEFAULT_SCHEMA

if TYPE_CHECKING:  # alembic and SQLAlchemy load only for the commands that need them
    from admin.migrations import SchemaState

app = typer.Typer(
    help="Create, upgrade, downgrade and inspect Conveyor's PostgreSQL tables. "
    "An application schema holds the outbox and the event ledger; the `conveyor` catalog schema "
    "holds consumers, dead letters and the audit log. Exit codes: 0 ok, 1 not at head or "
    "database error, 2 bad input.",
    no_args_is_help=True,
)

SchemaOption = Schema
CatalogOption = Annotated[
    bool, typer.Option("--catalog", help="Target only the catalog schema `conveyor`.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show Alembic's log of each migration step.")
]


@app.command()
def up(
    revision: Annotated[str, typer.Argument(help="Revision to reach.")] = "head",
    schema: SchemaOption = DEFAULT_SCHEMA,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    catalog: CatalogOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Upgrade the catalog to head, then the application schema to REVISION (creating it)."""
    from admin import migrations

    with _errors(), _alembic_log(verbose):
        if catalog:
            migrations.upgrade_catalog(database_url, revision)
        else:
            migrations.upgrade(database_url, schema, revision)
        _print_states(_states(database_url, schema, catalog))


@app.command()
def down(
    revision: Annotated[
        str, typer.Argument(help="Revision to reach: default one step back; `base` drops all.")
    ] = "-1",
    schema: SchemaOption = DEFAULT_SCHEMA,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    catalog: CatalogOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Downgrade the application schema (or, with --catalog, only the catalog) to REVISION.

    `base` drops every Conveyor table of the schema, and the schema itself if Conveyor created it
    and nothing else is left in it. Downgrading a schema never touches the catalog.
    """
    from admin import migrations

    with _errors(), _alembic_log(verbose):
        if catalog:
            migrations.downgrade_catalog(database_url, revision)
        else:
            migrations.downgrade(database_url, schema, revision)
        _print_states(_states(database_url, schema, catalog))


@app.command()
def current(
    schema: SchemaOption = DEFAULT_SCHEMA,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    catalog: CatalogOption = False,
    as_json: JsonOption = False,
) -> None:
    """Show the revision of the catalog and of the application schema."""
    with _errors():
        states = _states(database_url, schema, catalog)
    _print_states(states, as_json=as_json)


@app.command()
def history(as_json: JsonOption = False) -> None:
    """List the migrations shipped with this version of Conveyor, oldest first."""
    from admin import migrations

    revisions = migrations.history()
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in revisions], indent=2))
        return
    table = Table("history", "revision", "revises", "head", "description")
    for r in revisions:
        table.add_row(
            r.target.value,
            r.revision,
            r.down_revision or "-",
            "yes" if r.is_head else "",
            r.description,
        )
    Console().print(table)


@app.command()
def check(
    schema: SchemaOption = DEFAULT_SCHEMA,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    catalog: CatalogOption = False,
    as_json: JsonOption = False,
) -> None:
    """Exit 0 if the catalog and the application schema are at head, else 1 saying what to run."""
    from admin import migrations

    with _errors():
        states = _states(database_url, schema, catalog)
        _print_states(states, as_json=as_json)
        for state in states:
            migrations.require_head(state, app_schema=None if catalog else schema)


def _states(database_url: str, schema: str, catalog_only: bool) -> list[SchemaState]:
    from admin import migrations

    states = [migrations.check_catalog(database_url)]
    if not catalog_only:
        states.append(migrations.check(database_url, schema))
    return states


def _print_states(states: list[SchemaState], *, as_json: bool = False) -> None:
    if as_json:
        typer.echo(json.dumps([asdict(s) for s in states], indent=2))
        return
    for s in states:
        name = f"{s.schema} (catalog)" if s.schema == CATALOG_SCHEMA else s.schema
        where = "not migrated" if s.current is None else s.current
        status = "at head" if s.at_head else f"head is {s.head}"
        typer.echo(f"{name}: {where} ({status})")


@contextmanager
def _errors() -> Iterator[None]:
    """Turn an AdminError into one line on stderr and the documented exit code."""
    try:
        yield
    except AdminError as exc:
        fail(exc.message, EXIT_USAGE if isinstance(exc, InvalidInput) else EXIT_FAILURE)


@contextmanager
def _alembic_log(verbose: bool) -> Iterator[None]:
    """Show Alembic's step log on stderr for the duration of one command, if asked."""
    if not verbose:
        yield
        return
    logger = logging.getLogger("alembic")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
