"""Command-line options shared by several `conveyor` commands, each with its environment default."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from conveyor import database, wire

DatabaseUrl = Annotated[
    str,
    typer.Option(
        "--database-url", envvar="CONVEYOR_DATABASE_URL", help="PostgreSQL URL.", show_default=True
    ),
]
RedisUrl = Annotated[
    str, typer.Option("--redis-url", envvar="CONVEYOR_REDIS_URL", help="Redis URL.")
]
KeyPrefix = Annotated[
    str,
    typer.Option(
        "--key-prefix", envvar="CONVEYOR_KEY_PREFIX", help="First part of every Redis key."
    ),
]
LogLevel = Annotated[
    str,
    typer.Option("--log-level", envvar="CONVEYOR_LOG_LEVEL", help="debug, info, warning or error."),
]

DEFAULT_DATABASE_URL = database.DEFAULT_DATABASE_URL
DEFAULT_REDIS_URL = wire.DEFAULT_REDIS_URL
DEFAULT_PREFIX = wire.DEFAULT_PREFIX

EXIT_OK = 0
EXIT_FAILURE = 1
"""A dependency is unreachable, a schema is not at head, or the work failed."""
EXIT_USAGE = 2
"""A flag, argument or environment value is invalid (also typer's own usage errors)."""


def redact(url: str) -> str:
    """`url` with any password replaced by ***, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print `message` to stderr as `conveyor: error: ...` and exit with `code`."""
    print(f"conveyor: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def setup_logging(level: str) -> None:
    """Log `key=value` lines to stderr at `level`."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        fail(f"invalid --log-level {level!r}: use debug, info, warning or error", EXIT_USAGE)
    logging.basicConfig(
        level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


GrpcAddr = Annotated[
    str | None,
    typer.Option(
        "--grpc-addr",
        envvar="CONVEYOR_GRPC_ADDR",
        help="host:port for health and AdminService (port 0 picks one). Default: relay "
        "127.0.0.1:50051, consumer 127.0.0.1:50052.",
    ),
]
Reflection = Annotated[
    bool, typer.Option(envvar="CONVEYOR_GRPC_REFLECTION", help="Serve gRPC server reflection.")
]
TokensFile = Annotated[
    Path | None,
    typer.Option(envvar="CONVEYOR_TOKENS_FILE", help="AdminService tokens (reloaded on SIGHUP)."),
]
AllowUnauthenticated = Annotated[
    bool,
    typer.Option(
        envvar="CONVEYOR_ALLOW_UNAUTHENTICATED",
        help="AdminService without credentials, everyone with write scope (local demos only).",
    ),
]
TlsCert = Annotated[Path | None, typer.Option(envvar="CONVEYOR_TLS_CERT", help="Server cert.")]
TlsKey = Annotated[Path | None, typer.Option(envvar="CONVEYOR_TLS_KEY", help="Server key.")]
TlsClientCa = Annotated[
    Path | None, typer.Option(envvar="CONVEYOR_TLS_CLIENT_CA", help="Require client certs (mTLS).")
]
MtlsWriters = Annotated[
    list[str] | None,
    typer.Option(
        "--mtls-writer",
        envvar="CONVEYOR_MTLS_WRITERS",
        help="Client-certificate common name with write scope (repeatable; the variable takes "
        "names separated by spaces). Other verified certificates get read.",
    ),
]
DescriptorSets = Annotated[
    list[Path] | None,
    typer.Option(
        "--descriptor-set",
        envvar="CONVEYOR_DESCRIPTOR_SETS",
        help="FileDescriptorSet from `buf build -o FILE` whose types dead-letter payloads are "
        "shown as JSON with (repeatable; the variable takes paths separated by spaces).",
    ),
]
StallTimeout = Annotated[
    str,
    typer.Option(
        envvar="CONVEYOR_STALL_TIMEOUT",
        help="Work waiting and none done this long: NOT_SERVING.",
    ),
]
PageTokenKey = Annotated[
    str | None,
    typer.Option(
        envvar="CONVEYOR_PAGE_TOKEN_KEY",
        help="Key signing ListDeadLetters page tokens. Default: derived from the database URL.",
    ),
]
