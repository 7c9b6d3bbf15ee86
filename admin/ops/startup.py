"""What a relay or consumer waits for before it creates anything: PostgreSQL answering with its
schemas at head, and Redis answering and taking writes (its gRPC address is checked by
admin/ops/server.py).

The checks leave nothing in Redis or the catalog (the write probe's key is deleted, and expires
anyway), so a failed start leaves nothing behind. PostgreSQL and Redis get a bounded, logged wait
(`StartupSettings.startup_timeout`); a refusal no wait can fix (a wrong password, a database that
does not exist, a read-only replica) fails at once. `lost()` names the dependency behind a
failure after the checks, while the process starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
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
_TRANSIENT_REDIS = redis_client.UNAVAILABLE
"""Not answering (yet): refused, reset, timed out, loading its dataset, a cluster still forming
or failing over (CLUSTERDOWN, TRYAGAIN, no node or slot reachable)."""


async def wait_for_postgres(
    database_url: str, schemas: Sequence[str], *, within: float, shown_as: str
) -> None:
    """Wait up to `within` seconds for PostgreSQL at `database_url` to answer, then raise
    SchemaNotReady unless the catalog and `schemas` are at head; DependencyUnavailable when it
    does not answer. `shown_as` is the URL as messages show it (password masked)."""

    await asyncio.to_thread(migrations.heads)  # loads the scripts, outside the attempts' time

    async def attempt() -> None:
        try:
            await migrations.ensure_at_head(database_url, *schemas, writable=True)
        except migrations.ReadOnlyDatabase as exc:
            raise DependencyUnavailable(
                name="PostgreSQL", address=shown_as, cause=exc, waited=None
            ) from exc
        except DatabaseUnavailable as exc:
            cause = exc.__cause__ or exc
            if not isinstance(cause, _TRANSIENT_POSTGRES):
                raise DependencyUnavailable(
                    name="PostgreSQL", address=shown_as, cause=cause, waited=None
                ) from cause
            raise _Unanswered(cause) from cause

    await _wait("PostgreSQL", shown_as, attempt, within)


PROBE_TTL_MS = 10_000
"""The write probe's key expires after this long, should deleting it fail."""


async def wait_for_redis(redis_url: str, *, within: float, shown_as: str, key_prefix: str) -> None:
    """Wait up to `within` seconds for Redis at `redis_url` to answer PING, then check that it
    takes a write under `key_prefix` (a key set and deleted at once); DependencyUnavailable when
    it does not answer, or refuses the write (a read-only replica, an ACL). A refusal for want
    of memory (maxmemory) is only warned about. `shown_as`: as for `wait_for_postgres`."""
    probe = f"{key_prefix}:startup-probe:{uuid.uuid4().hex}"

    async def attempt() -> None:
        client = await redis_client.open(redis_url)
        try:
            await client.ping()
            await client.set(probe, b"", px=PROBE_TTL_MS)  # READONLY on a replica, NOPERM ...
            await client.delete(probe)
        except redis_errors.OutOfMemoryError as exc:
            # It would take the write but has no memory for it (checked after ACLs, and
            # replicas ignore maxmemory): a process starts, and works once memory is freed.
            # A consumer's acknowledgements are what let housekeeping free it.
            log.warning(
                "Redis at %s is out of memory and refuses writes (%s): starting all the same; "
                "events wait (in the outbox, or pending) until memory is freed or maxmemory "
                "raised",
                shown_as,
                exc,
            )
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


def lost(exc: BaseException, *, postgres: str, redis: str) -> DependencyUnavailable | None:
    """`exc`, raised while a process started after its checks passed, as the DependencyUnavailable
    of PostgreSQL (at `postgres`, as shown) or Redis (at `redis`) behind it; None when it came
    from neither."""
    name = _source(exc)
    if name is None:
        return None
    answered = isinstance(
        exc, (redis_errors.ResponseError, asyncpg.PostgresError, *_FINAL_REDIS)
    ) and not (name == "Redis" and redis_client.unavailable(exc))
    address = redis if name == "Redis" else postgres
    cause = exc if answered else _root(exc)
    return DependencyUnavailable(
        name=name, address=address, cause=cause, waited=None if answered else 0
    )


def _source(exc: BaseException) -> str | None:
    """`Redis` or `PostgreSQL`, by the error's type, else by the innermost driver frame."""
    if isinstance(exc, redis_errors.RedisError):
        return "Redis"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return "PostgreSQL"
    if not isinstance(exc, OSError | TimeoutError):
        return None
    modules: list[str] = []
    tb = exc.__traceback__
    while tb is not None:
        modules.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    for module in reversed(modules):
        if module.split(".")[0] == "redis":
            return "Redis"
        if module.split(".")[0] == "asyncpg":
            return "PostgreSQL"
    return None


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
