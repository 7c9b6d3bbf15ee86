"""What a relay or consumer waits for before it creates anything: PostgreSQL answering with its
schemas at head, and Redis answering (its gRPC address is checked by admin/ops/server.py).

The checks create nothing in Redis or the catalog, so a failed start leaves nothing behind.
PostgreSQL and Redis get a bounded, logged wait (`StartupSettings.startup_timeout`); a refusal no
wait can fix (a wrong password, a database that does not exist) fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
from redis import exceptions as redis_errors

from admin import migrations
from admin.errors import DatabaseUnavailable, DependencyUnavailable
from conveyor import redis_client

log = logging.getLogger(__name__)

FIRST_RETRY = 0.25
"""Seconds before the second attempt; the wait doubles up to MAX_RETRY."""
MAX_RETRY = 2.0
"""Longest wait between attempts, so a dependency that comes up is noticed within it."""
ATTEMPT_LIMIT = (3.0, 10.0)
"""Bounds of one attempt's own time: the time left, but at least 3 s and at most 10 s."""

_TRANSIENT_POSTGRES = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
)
_FINAL_REDIS = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.AuthenticationWrongNumberOfArgsError,
)
_TRANSIENT_REDIS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    OSError,
    TimeoutError,
)


async def wait_for_postgres(
    database_url: str, schemas: Sequence[str], *, within: float, shown_as: str
) -> None:
    """Wait up to `within` seconds for PostgreSQL at `database_url` to answer, then raise
    SchemaNotReady unless the catalog and `schemas` are at head; DependencyUnavailable when it
    does not answer. `shown_as` is the URL as messages show it (password masked)."""

    await asyncio.to_thread(migrations.heads)  # loads the scripts, outside the attempts' time

    async def attempt() -> None:
        try:
            await migrations.ensure_at_head(database_url, *schemas)
        except DatabaseUnavailable as exc:
            cause = exc.__cause__ or exc
            if not isinstance(cause, _TRANSIENT_POSTGRES):
                raise DependencyUnavailable(
                    name="PostgreSQL", address=shown_as, cause=cause, waited=None
                ) from cause
            raise _Unanswered(cause) from cause

    await _wait("PostgreSQL", shown_as, attempt, within)


async def wait_for_redis(redis_url: str, *, within: float, shown_as: str) -> None:
    """Wait up to `within` seconds for Redis at `redis_url` to answer PING;
    DependencyUnavailable when it does not. `shown_as`: as for `wait_for_postgres`."""

    async def attempt() -> None:
        client = redis_client.connect(redis_url)
        try:
            await client.ping()
        except _TRANSIENT_REDIS as exc:
            if isinstance(exc, _FINAL_REDIS):  # redis-py's AuthenticationError is a ConnectionError
                raise DependencyUnavailable(
                    name="Redis", address=shown_as, cause=exc, waited=None
                ) from exc
            raise _Unanswered(exc) from exc
        except redis_errors.RedisError as exc:  # not Redis at all, say
            raise DependencyUnavailable(
                name="Redis", address=shown_as, cause=exc, waited=None
            ) from exc
        finally:
            await client.aclose()

    await _wait("Redis", shown_as, attempt, within)


class _Unanswered(Exception):
    """One attempt found the dependency not answering; `cause` says how."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _wait(
    name: str, address: str, attempt: Callable[[], Awaitable[None]], within: float
) -> None:
    deadline = time.monotonic() + within
    delay = FIRST_RETRY
    while True:
        left = deadline - time.monotonic()
        try:
            async with asyncio.timeout(min(max(left, ATTEMPT_LIMIT[0]), ATTEMPT_LIMIT[1])):
                await attempt()
            return
        except _Unanswered as exc:
            cause = _root(exc.cause)
        except TimeoutError as exc:
            cause = exc
        left = deadline - time.monotonic()
        if left <= 0:
            raise DependencyUnavailable(name=name, address=address, cause=cause, waited=within)
        log.warning(
            "%s at %s did not answer (%s); trying again, for %.1f s more",
            name,
            address,
            _describe(cause),
            left,
        )
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, MAX_RETRY)


def _root(exc: BaseException) -> BaseException:
    """The innermost OSError behind `exc` (the refused connection a driver wrapped), else `exc`."""
    found: BaseException = exc
    seen: BaseException | None = exc
    for _ in range(10):  # a chain is short; the bound guards against a cycle
        seen = seen.__cause__ or seen.__context__ if seen is not None else None
        if isinstance(seen, OSError):
            found = seen
    return found


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
