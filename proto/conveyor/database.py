"""PostgreSQL-side conventions shared by migrations, relay, consumers and the admin plane."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

CATALOG_SCHEMA = "conveyor"
"""Schema of the deployment-wide catalog: consumer registry, dead-letter state, audit."""

OUTBOX_TABLE = "outbox"
LEDGER_TABLE = "event_ledger"
COMMIT_GUARD_TABLE = "conveyor_commit_guard"
"""Per-connection row a consumer's ledger claim touches; its deferred trigger lets only the
consumer's own COMMIT (after `set_config('conveyor.ledger_commit', 'on', true)`) through."""
RELAY_LISTENERS_TABLE = "conveyor_relay_listeners"
"""One row per relay LISTENing for the schema's NOTIFY (its LISTEN connection's pid): waiting for
a NOTIFY or busy claiming; the outbox trigger notifies unless every row says busy (app_0005)."""
VERSION_TABLE = "conveyor_alembic_version"
"""Alembic version table kept inside each application schema, apart from the app's own."""

CATALOG_VERSION_TABLE = "alembic_version"
"""Alembic version table of the catalog schema (it lives in `conveyor`, so no clash)."""

CONSUMERS_TABLE = "consumers"
"""Catalog table of registered consumers (group, name, topics, mode, heartbeat)."""
RELAYS_TABLE = "relays"
"""Catalog table of registered relays (name, schemas, gRPC address, heartbeat)."""
DEAD_LETTERS_TABLE = "dead_letters"
"""Catalog table of dead-letter state, one row per dead-letter stream entry."""
AUDIT_TABLE = "audit"
"""Catalog table of audited admin actions and denials."""
DEAD_LETTER_CURSORS_TABLE = "dead_letter_cursors"
"""Catalog table of the last entry reconciled, per dead-letter stream."""
TOPIC_LAYOUTS_TABLE = "topic_layouts"
"""Catalog table of the partitioned topics of each deployment (conveyor.layouts.Layout)."""

CONSUMER_MODES = ("exactly-once", "at-least-once")
"""Allowed `consumers.mode` values."""
DEAD_LETTER_STATES = ("open", "reprocessing", "reprocessed", "resolved")
"""Allowed `dead_letters.state` values; a dead letter starts `open`."""

DEFAULT_SCHEMA = "public"

LEDGER_RESULTS = ("success", "failure", "skipped", "dead_letter")
"""Allowed `event_ledger.processing_result` values; only success and skipped count as applied.
`dead_letter` marks an event the group moved to its dead-letter stream unapplied."""

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def validate_schema(name: str) -> str:
    """Return `name` if it is a schema name Conveyor accepts, else raise ValueError saying why.

    Only unquoted lower-case identifiers are accepted, so a schema name can be interpolated into
    DDL and NOTIFY channel names without quoting surprises.
    """
    if not _SCHEMA_RE.fullmatch(name):
        raise ValueError(
            f"invalid schema name {name!r}: use 1-63 characters of a-z, 0-9 and _, "
            "not starting with a digit"
        )
    if name == CATALOG_SCHEMA or name.startswith("pg_"):
        raise ValueError(f"invalid schema name {name!r}: reserved for the catalog or PostgreSQL")
    return name


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel the outbox trigger of `schema` signals on.

    Truncated to PostgreSQL's 63-byte identifier limit; two long schema names sharing a prefix
    would only wake each other's relays, which then find nothing to do.
    """
    return f"conveyor_outbox_{schema}"[:63]


DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


APPLICATION_NAME_PREFIX = "conveyor "
"""How the application_name of every PostgreSQL connection Conveyor opens starts."""

_APPLICATION_NAME_BYTES = 63
"""What PostgreSQL keeps of an application_name (NAMEDATALEN - 1)."""


def application_name(role: str, subject: str = "") -> str:
    """`conveyor <role> <subject>`, what a Conveyor connection shows in pg_stat_activity: e.g.
    `conveyor consume billing/host-4242` or `conveyor relay listen host-4242`.

    Fit to PostgreSQL's 63 bytes: a longer subject keeps its start and its end (the member, a
    pid) around `..`. Characters other than printable ASCII show as `?`, as PostgreSQL shows them.
    """
    name = f"{APPLICATION_NAME_PREFIX}{role}"
    room = _APPLICATION_NAME_BYTES - len(name) - 1
    subject = "".join(c if " " <= c <= "~" else "?" for c in subject)
    if len(subject) > room:
        head = (room - 2) // 2
        subject = f"{subject[:head]}..{subject[len(subject) - (room - 2 - head) :]}"
    return f"{name} {subject}" if subject else name


def server_settings(
    database_url: str, role: str, subject: str = "", environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """asyncpg `server_settings` naming a connection `application_name(role, subject)`, unless
    the user named Conveyor's connections: `application_name=` in the URL's query wins, then
    PGAPPNAME, as with libpq. asyncpg itself lets server_settings override the URL's query and
    ignores PGAPPNAME, so the name is always given here, the user's when there is one."""
    query = parse_qs(urlsplit(database_url).query)
    given = query.get("application_name", [])
    if given:
        return {"application_name": given[-1]}
    if environ.get("PGAPPNAME"):
        return {"application_name": environ["PGAPPNAME"]}
    return {"application_name": application_name(role, subject)}
