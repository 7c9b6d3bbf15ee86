"""How `conveyor relay` and `conveyor consume` start: the checks they make before creating
anything, and the one line (and exit code) each failed check ends with.

Order: the gRPC address (exit 8), PostgreSQL and the schemas (exit 7, or 6 when a schema is not
at head), Redis (exit 7). Only then does the process bind its gRPC address for real, and only
after that does a consumer create its groups and register in the catalog, so a failed start
leaves nothing behind. docs/operations.md, "Start-up", says the same for operators.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from admin.cli.options import (
    EXIT_ADDRESS_IN_USE,
    EXIT_FAILURE,
    EXIT_PRECONDITION,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    SERVER,
    fail,
    redact,
)
from admin.cli.setting_options import SettingOptions
from admin.errors import (
    AddressUnavailable,
    AdminError,
    DependencyUnavailable,
    InvalidInput,
    OpsPlaneUnavailable,
    SchemaNotReady,
)
from admin.ops.settings import OpsSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Needs:
    """What one relay or consumer needs before it may create anything."""

    options: SettingOptions
    """The command's options, to name `--database-url` and `--redis-url` as it declares them."""
    database_url: str
    redis_url: str
    schemas: Sequence[str]
    """Application schemas that must be at head besides the catalog."""
    ops: OpsSettings
    timeout: float
    """Seconds PostgreSQL and Redis get to answer (`--startup-timeout`)."""


def check(needs: Needs) -> None:
    """Check the gRPC address, PostgreSQL with the schemas, and Redis, in that order; on the
    first failure print one line and exit with its code. Then warn if AdminService can
    authenticate nobody."""
    from admin.ops import server, startup  # loads grpc, asyncpg and redis: only for a start

    try:
        server.check_bindable(needs.ops.server.grpc_addr)
        asyncio.run(
            startup.wait_for_postgres(
                needs.database_url,
                needs.schemas,
                within=needs.timeout,
                shown_as=redact(needs.database_url),
            )
        )
        asyncio.run(
            startup.wait_for_redis(
                needs.redis_url, within=needs.timeout, shown_as=redact(needs.redis_url)
            )
        )
    except (AdminError, ValueError) as exc:
        _fail(exc, needs.options)
    if needs.ops.authenticates_nobody:
        log.warning(
            "AdminService can authenticate nobody (no --tokens-file, no --tls-client-ca, no "
            "--allow-unauthenticated): every AdminService call (conveyor status, dlq, trace) "
            "will be refused UNAUTHENTICATED; make a token with `conveyor token create "
            "--principal NAME --scope read --tokens-file FILE` and start with --tokens-file FILE "
            "(see docs/configuration.md)"
        )


def run(serve: Callable[[Callable[[], None]], Awaitable[None]], options: SettingOptions) -> None:
    """Run `serve(started)` (around admin.ops.runtime.serve, which calls `started()` once the
    pipeline runs); a start that fails ends in one line and its exit code."""
    import asyncpg
    from redis.exceptions import RedisError

    started = False

    def mark() -> None:
        nonlocal started
        started = True

    async def main() -> None:
        await serve(mark)

    try:
        asyncio.run(main())
    except AdminError as exc:
        _fail(exc, options)
    except (OSError, RedisError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if started:
            raise
        fail(
            f"PostgreSQL or Redis failed while the process started ({type(exc).__name__}: "
            f"{exc}): start it again once both answer",
            EXIT_UNAVAILABLE,
        )


def _fail(exc: BaseException, options: SettingOptions) -> NoReturn:
    if isinstance(exc, AddressUnavailable):
        addr = f"{SERVER.flag('grpc_addr')} HOST:PORT (or {SERVER.envvar('grpc_addr')})"
        if exc.in_use:
            fail(
                f"{exc.message}: another relay or consumer may be running here; "
                f"give this one {addr}",
                EXIT_ADDRESS_IN_USE,
            )
        fail(f"{exc.message}: give this one an address of this host, {addr}", EXIT_ADDRESS_IN_USE)
    if isinstance(exc, InvalidInput | ValueError):
        fail(str(exc), EXIT_USAGE)
    if isinstance(exc, SchemaNotReady):
        fail(exc.message, EXIT_PRECONDITION)
    if isinstance(exc, DependencyUnavailable):
        field = "redis_url" if exc.name == "Redis" else "database_url"
        where = f"{options.flag(field)} / {options.envvar(field)}"
        remedy = f"fix {where}" if exc.waited is None else f"start it, or set {where}"
        fail(f"{exc.message}: {remedy}", EXIT_UNAVAILABLE)
    if isinstance(exc, OpsPlaneUnavailable):
        fail(exc.message, EXIT_UNAVAILABLE)
    fail(getattr(exc, "message", str(exc)), EXIT_FAILURE)
