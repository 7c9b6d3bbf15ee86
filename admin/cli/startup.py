"""How `conveyor relay` and `conveyor consume` start: the checks they make before creating
anything, and the one line (and exit code) each failed check ends with.

Order: the flags' values (exit 2: URLs, TLS files, the tokens file), the gRPC address and the
--metrics-addr address (exit 8), PostgreSQL and the schemas (exit 7, or 6 when a schema is not at
head), Redis answering and taking writes (exit 7). Only then does the process bind its addresses
for real, and only after that does a consumer create its groups and register in the catalog, so
a failed start leaves nothing behind. docs/operations.md, "Start-up", says the same for operators.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import typer

from admin.cli.options import (
    AUTH,
    EXIT_ADDRESS_IN_USE,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PRECONDITION,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    OPS,
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
    key_prefix: str
    """Where the Redis write probe's key goes (set and deleted at once)."""
    schemas: Sequence[str]
    """Application schemas that must be at head besides the catalog."""
    ops: OpsSettings
    timeout: float
    """Seconds PostgreSQL and Redis get to answer (`--startup-timeout`)."""


def check(needs: Needs) -> None:
    """Check the flags' values (URLs, TLS files, tokens file), the gRPC address, PostgreSQL with
    the schemas, and Redis, in that order; on the first failure print one line and exit with its
    code. Then warn if AdminService can authenticate nobody.

    From here on SIGTERM and SIGINT stop the process (exit 0, also while it waits) and SIGHUP
    never kills it (admin/ops/process.py)."""
    from admin.ops import process, scrape, server  # loads grpc: only for a start

    process.hold_signals()
    try:
        _check_urls(needs)
        server.check_tls(needs.ops.server)
        tokens = _count_tokens(needs.ops)
        server.check_bindable(needs.ops.server.grpc_addr)
        if needs.ops.metrics_addr is not None:
            scrape.check_bindable(needs.ops.metrics_addr)
        _wait(needs)
    except (AdminError, ValueError) as exc:
        _fail(exc, needs.options)
    if needs.ops.authenticates_nobody or (tokens == 0 and needs.ops.server.tls_client_ca is None):
        why = (
            f"the tokens file {needs.ops.auth.tokens_file} holds no token"
            if tokens == 0
            else "no --tokens-file, no --tls-client-ca, no --allow-unauthenticated"
        )
        log.warning(
            "AdminService can authenticate nobody (%s): every AdminService call (conveyor "
            "status, dlq, trace) will be refused UNAUTHENTICATED; make a token with `conveyor "
            "token create --principal NAME --scope read --tokens-file FILE` and start with "
            "--tokens-file FILE (see docs/configuration.md)",
            why,
        )


def _check_urls(needs: Needs) -> None:
    from conveyor.urls import POSTGRES_SCHEMES, REDIS_SCHEMES, url_problem

    for field, url, schemes in (
        ("database_url", needs.database_url, POSTGRES_SCHEMES),
        ("redis_url", needs.redis_url, REDIS_SCHEMES),
    ):
        problem = url_problem(url, schemes)
        if problem is not None:
            option = f"{needs.options.flag(field)} (or {needs.options.envvar(field)})"
            raise ValueError(f"invalid {option}: {problem}")


def _count_tokens(ops: OpsSettings) -> int | None:
    """How many tokens the tokens file holds (None without one); ValueError naming the option
    when it cannot be read or has a malformed line."""
    from admin.ops.tokens import TokensFileInvalid, read_tokens

    path = ops.auth.tokens_file
    if path is None:
        return None
    option = f"{AUTH.flag('tokens_file')} (or {AUTH.envvar('tokens_file')})"
    if path.exists() and not path.is_file():  # a pipe, say `<(vault read ...)`, reads only once
        raise ValueError(
            f"invalid {option}: {str(path)!r} is not a regular file; the process reads it at "
            "start and again on SIGHUP, so write the tokens to a file and name that"
        )
    try:
        return len(read_tokens(path))
    except TokensFileInvalid as exc:
        raise ValueError(f"invalid {option}: {exc.message}") from exc


def _wait(needs: Needs) -> None:
    """Wait for PostgreSQL, then Redis; a stop asked for meanwhile ends the process (exit 0)."""
    from admin.ops import process, startup

    database, redis = redact(needs.database_url), redact(needs.redis_url)
    waiting = [f"PostgreSQL at {database}"]

    async def both() -> None:
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        assert task is not None

        def cancel() -> None:
            loop.call_soon_threadsafe(task.cancel)

        with process.stopping_wakes(cancel):
            within = needs.timeout
            await startup.wait_for_postgres(
                needs.database_url, needs.schemas, within=within, shown_as=database
            )
            waiting.append(f"Redis at {redis}")
            await startup.wait_for_redis(
                needs.redis_url, within=within, shown_as=redis, key_prefix=needs.key_prefix
            )

    try:
        asyncio.run(both())
    except asyncio.CancelledError:
        asked = process.stop_requested()
        if asked is None:
            raise
        log.info("stopped by %s while waiting for %s", asked, waiting[-1])
        raise typer.Exit(EXIT_OK) from None


def run(serve: Callable[[Callable[[], None]], Awaitable[None]], needs: Needs) -> None:
    """Run `serve(started)` (around admin.ops.runtime.serve, which calls `started()` once the
    pipeline runs); a start that fails ends in one line and its exit code, naming PostgreSQL or
    Redis and its option when one of them failed after the checks passed."""
    from admin.ops.startup import lost

    started = False

    def mark() -> None:
        nonlocal started
        started = True

    async def main() -> None:
        await serve(mark)

    try:
        asyncio.run(main())
    except AdminError as exc:
        _fail(exc, needs.options)
    except Exception as exc:
        gone = (
            None
            if started
            else lost(exc, postgres=redact(needs.database_url), redis=redact(needs.redis_url))
        )
        if gone is None:
            raise
        _fail(gone, needs.options)


def _fail(exc: BaseException, options: SettingOptions) -> NoReturn:
    if isinstance(exc, AddressUnavailable):
        from admin.ops.scrape import MetricsAddressUnavailable

        metrics = isinstance(exc, MetricsAddressUnavailable)
        flags, field = (OPS, "metrics_addr") if metrics else (SERVER, "grpc_addr")
        addr = f"{flags.flag(field)} HOST:PORT (or {flags.envvar(field)})"
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
