"""Alembic environment shared by Conveyor's application-schema and catalog histories.

Run it through `admin.migrations` (or `conveyor migrate`), which builds the Alembic Config in code
and passes, in `config.attributes`: `connect` (opens the asyncpg connection to migrate on),
`conveyor_schema` (the schema to migrate), `version_table` and `version_table_schema`. There is
no alembic.ini.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from conveyor.database import CATALOG_SCHEMA, validate_schema

SCHEMA_MARKER = "created by conveyor migrate; dropped by `conveyor migrate down base` when empty"
"""Comment put on a schema Conveyor created, so `down base` drops only schemas it owns."""

_DEPENDENT_OBJECTS_STILL_EXIST = "2BP01"


def _attribute(name: str) -> str:
    return str(_given(name))


def _given(name: str) -> Any:
    try:
        return context.config.attributes[name]
    except KeyError as exc:
        raise RuntimeError(
            f"config.attributes[{name!r}] is not set: run Conveyor migrations through "
            "`conveyor migrate` or admin.migrations, not the alembic command"
        ) from exc


def _create_schema(connection: Connection, schema: str) -> None:
    """Create `schema` (marked as Conveyor's) unless it exists; the version table lives in it."""
    exists = connection.scalar(
        text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema)"),
        {"schema": schema},
    )
    if not exists:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
        connection.execute(text(f"COMMENT ON SCHEMA {schema} IS '{SCHEMA_MARKER}'"))


def _remove_at_base(connection: Connection, schema: str, version_table: str) -> None:
    """At base, drop the empty version table, and the schema if Conveyor made it and it is empty."""
    connection.execute(text(f"DROP TABLE IF EXISTS {schema}.{version_table}"))
    comment = connection.scalar(
        text("SELECT obj_description(CAST(:schema AS regnamespace), 'pg_namespace')"),
        {"schema": schema},
    )
    if comment != SCHEMA_MARKER:
        return
    try:
        with connection.begin_nested():
            connection.execute(text(f"DROP SCHEMA {schema} RESTRICT"))
    except DBAPIError as exc:
        # Other objects live in the schema now: it is no longer only Conveyor's, keep it.
        if getattr(exc.orig, "sqlstate", None) != _DEPENDENT_OBJECTS_STILL_EXIST:
            raise


def _migrate(connection: Connection) -> None:
    schema = _attribute("conveyor_schema")
    if schema != CATALOG_SCHEMA:
        validate_schema(schema)
    version_table = _attribute("version_table")
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table=version_table,
        version_table_schema=_attribute("version_table_schema"),
    )
    with context.begin_transaction():
        # Serialize concurrent `migrate up` runs (e.g. several pods starting) per schema.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"conveyor.migrate.{schema}"},
        )
        _create_schema(connection, schema)
        context.run_migrations()
        if not context.get_context().get_current_heads():
            _remove_at_base(connection, schema, version_table)


async def _run() -> None:
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=_given("connect"), poolclass=pool.NullPool
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("Conveyor migrations run online only; offline (--sql) mode is not supported")
asyncio.run(_run())
