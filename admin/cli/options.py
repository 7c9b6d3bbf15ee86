"""Command-line options shared by several `conveyor` commands, each with its environment default:
the connection options, and those of the ops plane every relay and consumer serves (derived from
admin/ops/settings.py)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from admin.cli import log_format
from admin.cli.setting_options import SettingOptions, Shown
from admin.ops.settings import AuthSettings, OpsSettings, ServerSettings, StartupSettings
from conveyor import database, urls, wire

DatabaseUrl = Annotated[
    str,
    typer.Option(
        "--database-url",
        envvar="CONVEYOR_DATABASE_URL",
        help="PostgreSQL holding the outbox, ledger and catalog.",
    ),
]
RedisUrl = Annotated[
    str,
    typer.Option(
        "--redis-url",
        envvar="CONVEYOR_REDIS_URL",
        help=(
            "Redis holding the streams (`redis://`, `rediss://`, `unix://`); a Redis Cluster node "
            "is detected as one, `redis+cluster://` or `rediss+cluster://` say so outright."
        ),
    ),
]
KeyPrefix = Annotated[
    str,
    typer.Option(
        "--key-prefix",
        envvar="CONVEYOR_KEY_PREFIX",
        help="First part of every Redis key, so tenants and tests can share one Redis; it also "
        "names the deployment in the shared catalog (a process's AdminService sees only the dead "
        "letters of its own prefix).",
    ),
]
Schema = Annotated[
    str,
    typer.Option(
        "--schema",
        envvar="CONVEYOR_SCHEMA",
        help=escape(
            "Application schema with the outbox and ledger (`[a-z_][a-z0-9_]{0,62}`; "
            "`conveyor` and `pg_*` are reserved)."
        ),
    ),
]
LogLevel = Annotated[
    str,
    typer.Option(
        "--log-level",
        envvar="CONVEYOR_LOG_LEVEL",
        help="debug, info, warning or error; logs go to stderr.",
    ),
]
LogFormat = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="CONVEYOR_LOG_FORMAT",
        help="text (`time level logger: message` lines) or json (one object per line: time, "
        "level, logger, message, exception), for log shippers.",
    ),
]

DEFAULT_DATABASE_URL = database.DEFAULT_DATABASE_URL
DEFAULT_REDIS_URL = wire.DEFAULT_REDIS_URL
DEFAULT_PREFIX = wire.DEFAULT_PREFIX
DEFAULT_SCHEMA = database.DEFAULT_SCHEMA
DEFAULT_LOG_LEVEL = "info"
DEFAULT_LOG_FORMAT = "text"

EXIT_OK = 0
"""Success; for `relay` and `consume`, a graceful stop after SIGTERM or SIGINT (also while they
wait for PostgreSQL or Redis at start)."""
EXIT_FAILURE = 1
"""The work failed, or a server the command needs did not answer (client commands; `migrate`:
PostgreSQL unreachable, a schema not at head); `verify`: an event was lost."""
EXIT_USAGE = 2
"""A flag, argument or environment value is invalid (also typer's own usage errors)."""
EXIT_PRECONDITION = 6
"""Client commands: the server answered FAILED_PRECONDITION (e.g. reprocessing a resolved dead
letter). `relay`, `consume` and `verify`: a schema they need is not at head (or has no Conveyor
tables); the message names the `conveyor migrate up` command that fixes it. `relay backfill`: the
group does not exist on the topic (no consumer of it has started); nothing was sent."""
EXIT_UNAVAILABLE = 7
"""`relay` and `consume`: PostgreSQL or Redis did not answer within --startup-timeout, answered
with an error (a wrong password, a read-only Redis replica, say), or went away between the checks
and the start; the message names the address and the option that sets it. Nothing was created.
`verify`: PostgreSQL or Redis did not answer or answered with an error; nothing was concluded."""
EXIT_ADDRESS_IN_USE = 8
"""`relay` and `consume`: the --grpc-addr address cannot be bound (another process holds it, or
the host has no such address). Nothing was created."""
EXIT_RESTART = 9
"""`relay`: a topic's partition count changed in the catalog while it ran (`conveyor topic
partition`); it stopped publishing after the batches in flight. Start it again: it routes by the
new layout."""


redact = urls.redact
"""`url` with any password replaced by ***, for messages and logs (conveyor.urls.redact)."""


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print `message` to stderr as `conveyor: error: ...` and exit with `code`."""
    print(f"conveyor: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def setup_logging(level: str, line_format: str = DEFAULT_LOG_FORMAT) -> None:
    """Log `key=value` lines to stderr at `level`, as text or JSON (admin/cli/log_format.py)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        fail(f"invalid --log-level {level!r}: use debug, info, warning or error", EXIT_USAGE)
    if line_format not in log_format.FORMATS:
        fail(f"invalid --log-format {line_format!r}: use text or json", EXIT_USAGE)
    handler = logging.StreamHandler()
    handler.setFormatter(log_format.formatter(line_format))
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    # Alembic narrates every load of its scripts at INFO; `conveyor migrate -v` shows that log.
    quiet = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    logging.getLogger("alembic").setLevel(quiet)


_GRPC_PANEL = "gRPC and AdminService"

SERVER = SettingOptions(
    ServerSettings,
    shown={"reflection": Shown(envvar="CONVEYOR_GRPC_REFLECTION")},
    panel=_GRPC_PANEL,
)
"""`--grpc-addr` (each command gives its own default), `--reflection`, `--tls-*`."""
AUTH = SettingOptions(
    AuthSettings,
    shown={
        "mtls_scopes": Shown(
            flag="--mtls-writer",
            envvar="CONVEYOR_MTLS_WRITERS",
            help="Client-certificate common name given write scope; needs --tls-client-ca. Other "
            "verified certificates get read. Repeatable; the variable takes names separated by "
            "spaces.",
        )
    },
    panel=_GRPC_PANEL,
)
"""`--tokens-file`, `--allow-unauthenticated`, `--mtls-writer` (names given write scope)."""
OPS = SettingOptions(
    OpsSettings,
    shown={
        "payload_types": Shown(
            flag="--descriptor-set",
            envvar="CONVEYOR_DESCRIPTOR_SETS",
            help="FileDescriptorSet built with `buf build -o types.binpb` (imports included, "
            "buf's default): dead-letter payloads of its types are shown as JSON, beside the "
            "types the process registers itself; other payloads come as base64 with their type "
            "URL. A set that does not parse, or lacks its imports, stops the start. Repeatable; "
            "the variable takes paths separated by spaces.",
        )
    },
    nested=("server", "auth"),
    panel=_GRPC_PANEL,
)
"""`--stall-timeout`, `--descriptor-set` (paths that become `payload_types`), `--page-token-key`."""
STARTUP = SettingOptions(StartupSettings)
"""`--startup-timeout`: how long `relay` and `consume` wait for PostgreSQL and Redis at start."""
