"""Programmatic Alembic runner: upgrade, downgrade and inspect Conveyor's PostgreSQL schemas.

Two histories share one Alembic environment (`migrations/env.py`):
- `app`: the outbox and event ledger of one application schema, versioned in that schema's
  `conveyor_alembic_version` table, so several schemas live side by side and the application's
  own `alembic_version` is left alone;
- `catalog`: the deployment-wide `conveyor` schema (consumers, dead letters, audit), versioned in
  `conveyor.alembic_version`.

The public functions are synchronous (Alembic's environment runs its own event loop); call them
with `asyncio.to_thread` from async code. `ensure_at_head` is the async exception: it only reads the
version tables, with asyncpg.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

import conveyor
from admin.errors import (
    DatabaseUnavailable,
    InvalidInput,
    MigrationFailed,
    SchemaNotReady,
)
from conveyor.database import (
    CATALOG_SCHEMA,
    CATALOG_VERSION_TABLE,
    VERSION_TABLE,
    server_settings,
    validate_schema,
)
from conveyor.urls import redact

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 10.0
_ALEMBIC_RUN = threading.Lock()
"""Alembic keeps its `context` and `op` proxies in module globals: one run per process at once."""
_Direction = Literal["upgrade", "downgrade"]


class Target(enum.StrEnum):
    """Which migration history: one application schema's, or the catalog's."""

    APP = "app"
    CATALOG = "catalog"


@dataclass(frozen=True)
class SchemaState:
    """Where one schema stands against the migrations shipped with this version of Conveyor."""

    schema: str
    current: str | None
    """Revision recorded in the schema's version table; None when never migrated."""
    head: str
    """The newest revision this version of Conveyor knows."""
    at_head: bool


@dataclass(frozen=True)
class Revision:
    """One migration script, as `conveyor migrate history` lists it."""

    target: Target
    revision: str
    down_revision: str | None
    description: str
    is_head: bool


def migrations_dir() -> Path:
    """The Alembic environment directory: packaged in the wheel, else the source checkout's."""
    packaged = Path(conveyor.__file__).parent / "_migrations"
    if (packaged / "env.py").is_file():
        return packaged
    source = Path(__file__).resolve().parent.parent / "migrations"
    if (source / "env.py").is_file():
        return source
    raise RuntimeError(f"Conveyor's migrations are missing: looked in {packaged} and {source}")


def upgrade(database_url: str, schema: str, revision: str = "head") -> None:
    """Upgrade the catalog to head, then application schema `schema` to `revision`.

    Creates the schema if it does not exist (and marks it as Conveyor's, see `downgrade`).
    """
    schema = _checked_schema(schema)
    _run(Target.CATALOG, database_url, CATALOG_SCHEMA, "upgrade", "head")
    _run(Target.APP, database_url, schema, "upgrade", revision)


def downgrade(database_url: str, schema: str, revision: str = "-1") -> None:
    """Downgrade application schema `schema` to `revision` (default one step); never the catalog.

    At `base` every Conveyor table of the schema is gone, its version table too; the schema itself
    is dropped only if Conveyor created it and nothing else lives in it.
    """
    _run(Target.APP, database_url, _checked_schema(schema), "downgrade", revision)


def upgrade_catalog(database_url: str, revision: str = "head") -> None:
    """Upgrade the `conveyor` catalog schema alone."""
    _run(Target.CATALOG, database_url, CATALOG_SCHEMA, "upgrade", revision)


def downgrade_catalog(database_url: str, revision: str = "-1") -> None:
    """Downgrade the `conveyor` catalog schema alone (default one step); `base` empties it."""
    _run(Target.CATALOG, database_url, CATALOG_SCHEMA, "downgrade", revision)


def current(database_url: str, schema: str) -> str | None:
    """The revision application schema `schema` is at; None when it was never migrated."""
    schema = _checked_schema(schema)
    _require_no_running_loop("current")
    return asyncio.run(_read_revision(database_url, schema, VERSION_TABLE))


def current_catalog(database_url: str) -> str | None:
    """The revision the catalog is at; None when it was never migrated."""
    _require_no_running_loop("current_catalog")
    return asyncio.run(_read_revision(database_url, CATALOG_SCHEMA, CATALOG_VERSION_TABLE))


def heads() -> dict[Target, str]:
    """The head revision of each history shipped with this version of Conveyor."""
    return dict(_heads())


@functools.cache  # the scripts do not change while a process runs; loading them takes a while
def _heads() -> tuple[tuple[Target, str], ...]:
    found: dict[Target, str] = {}
    for target in Target:
        head = _scripts(target).get_current_head()
        if head is None:
            raise RuntimeError(f"the {target} migration history in {migrations_dir()} is empty")
        found[target] = head
    return tuple(found.items())


def history() -> list[Revision]:
    """Every migration script, catalog first, each history oldest first."""
    revisions: list[Revision] = []
    for target in (Target.CATALOG, Target.APP):
        scripts = list(_scripts(target).walk_revisions())
        for script in reversed(scripts):
            down = script.down_revision
            revisions.append(
                Revision(
                    target=target,
                    revision=script.revision,
                    down_revision=down if isinstance(down, str) or down is None else ",".join(down),
                    description=script.doc,
                    is_head=script.is_head,
                )
            )
    return revisions


def check(database_url: str, schema: str) -> SchemaState:
    """Compare application schema `schema` with the app head."""
    schema = _checked_schema(schema)
    return _state(schema, current(database_url, schema), heads()[Target.APP])


def check_catalog(database_url: str) -> SchemaState:
    """Compare the catalog with the catalog head."""
    return _state(CATALOG_SCHEMA, current_catalog(database_url), heads()[Target.CATALOG])


def require_head(state: SchemaState, *, app_schema: str | None = None) -> None:
    """Raise SchemaNotReady, naming the command that fixes it, unless `state` is at head.

    `app_schema` is the application schema to name in the command (the catalog is upgraded along
    with any application schema); without it, a catalog state names `--catalog`.
    """
    if state.at_head:
        return
    target = Target.CATALOG if state.schema == CATALOG_SCHEMA else Target.APP
    known = state.current is None or _knows(target, state.current)
    if not known:
        cmd = None
    elif app_schema is not None or target is Target.APP:
        cmd = f"conveyor migrate up --schema {app_schema or state.schema}"
    else:
        cmd = "conveyor migrate up --catalog"
    raise SchemaNotReady(schema=state.schema, current=state.current, head=state.head, command=cmd)


class ReadOnlyDatabase(Exception):
    """PostgreSQL answers but takes no writes: a standby, or a role or database that defaults to
    read-only transactions."""


async def ensure_at_head(database_url: str, *schemas: str, writable: bool = False) -> None:
    """Raise SchemaNotReady unless the catalog and every application schema in `schemas` are at
    head (DatabaseUnavailable when PostgreSQL does not answer; with `writable`, ReadOnlyDatabase
    when it takes no writes).

    For `conveyor relay` / `conveyor consume` at start: reads the version tables on one asyncpg
    connection; a missing schema or version table counts as never migrated. The application
    schemas are named first, as `conveyor migrate up --schema S` brings the catalog along.
    """
    checked = [_checked_schema(schema) for schema in schemas]
    shipped = heads()
    conn = await _connect(_parse_url(database_url))
    try:
        apps = [await _version(conn, schema, VERSION_TABLE) for schema in checked]
        catalog = await _version(conn, CATALOG_SCHEMA, CATALOG_VERSION_TABLE)
        read_only = writable and await conn.fetchval("SHOW transaction_read_only") == "on"
    finally:
        await conn.close()
    if read_only:
        raise ReadOnlyDatabase(
            "it takes no writes (transaction_read_only is on): a standby, or a role or database "
            "set to read-only; point it at the primary"
        )
    for schema, app in zip(checked, apps, strict=True):
        require_head(_state(schema, app, shipped[Target.APP]), app_schema=schema)
    state = _state(CATALOG_SCHEMA, catalog, shipped[Target.CATALOG])
    require_head(state, app_schema=checked[0] if checked else None)


def _checked_schema(schema: str) -> str:
    try:
        return validate_schema(schema)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="schema", value=schema) from exc


def _parse_url(database_url: str) -> URL:
    try:
        url = make_url(database_url)
        url.port  # noqa: B018 - sqlalchemy parses the port lazily; int() fails here
    except (ArgumentError, ValueError) as exc:
        raise InvalidInput(
            f"invalid database URL {redact(database_url)!r}: expected "
            "postgresql://user@host:port/db",
            field="database_url",
            value=redact(database_url),
        ) from exc
    if url.get_backend_name() != "postgresql":
        raise InvalidInput(
            f"invalid database URL {redact(database_url)!r}: Conveyor needs PostgreSQL "
            "(postgresql://user@host:port/db)",
            field="database_url",
            value=redact(database_url),
        )
    return url


def _state(schema: str, current: str | None, head: str) -> SchemaState:
    return SchemaState(schema=schema, current=current, head=head, at_head=current == head)


def _knows(target: Target, revision: str) -> bool:
    try:
        return _scripts(target).get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False


def _config(target: Target, url: URL | None = None, schema: str | None = None) -> Config:
    root = migrations_dir()
    config = Config()
    # set_main_option interpolates %(name)s, so a literal % in a path must be doubled.
    config.set_main_option("script_location", str(root).replace("%", "%%"))
    config.set_main_option("path_separator", "newline")
    versions = root / "versions" / target.value
    config.set_main_option("version_locations", str(versions).replace("%", "%%"))
    if url is not None and schema is not None:
        dsn = _dsn(url)  # connected as every other connection, not through SQLAlchemy's URL
        connect = functools.partial(asyncpg.connect, dsn, server_settings=_named(dsn))
        config.attributes.update(
            connect=connect,
            conveyor_schema=schema,
            version_table=CATALOG_VERSION_TABLE if target is Target.CATALOG else VERSION_TABLE,
            version_table_schema=schema,
        )
    return config


def _scripts(target: Target) -> ScriptDirectory:
    return ScriptDirectory.from_config(_config(target))


def _run(
    target: Target, database_url: str, schema: str, direction: _Direction, revision: str
) -> None:
    _require_no_running_loop(direction)
    url = _parse_url(database_url)
    asyncio.run(_probe(url))
    config = _config(target, url, schema)
    try:
        with _ALEMBIC_RUN:
            if direction == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    except (CommandError, RevisionError) as exc:
        raise InvalidInput(
            f"cannot {direction} schema {schema!r} to {revision!r}: {exc}",
            field="revision",
            value=revision,
        ) from exc
    except (SQLAlchemyError, asyncpg.PostgresError, OSError) as exc:
        raise MigrationFailed(schema=schema, revision=revision, cause=exc) from exc
    log.info("migrated schema=%s history=%s %s to=%s", schema, target, direction, revision)


def _require_no_running_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"admin.migrations {what} is synchronous and runs its own event loop: "
        "call it with asyncio.to_thread from async code"
    )


def _dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _named(dsn: str) -> dict[str, str]:
    return server_settings(dsn, "migrate")


async def _connect(url: URL) -> asyncpg.Connection:
    dsn = _dsn(url)
    try:
        return await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT, server_settings=_named(dsn))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(url=redact(url.render_as_string()), cause=exc) from exc


async def _probe(url: URL) -> None:
    """Fail with DatabaseUnavailable before Alembic starts, so that error reads plainly."""
    conn = await _connect(url)
    await conn.close()


async def _read_revision(database_url: str, schema: str, table: str) -> str | None:
    conn = await _connect(_parse_url(database_url))
    try:
        return await _version(conn, schema, table)
    finally:
        await conn.close()


async def _version(conn: asyncpg.Connection, schema: str, table: str) -> str | None:
    try:
        rows = await conn.fetch(f"SELECT version_num FROM {schema}.{table}")
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return None
    if not rows:
        return None
    # Linear histories keep one row; several would be unmerged branches, shown as such.
    return ",".join(sorted(str(row["version_num"]) for row in rows))
