"""Reprocess requests by idempotency key: a repeated request gets the first one's outcome."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Final, TypeVar

import asyncpg

from admin.catalog.records import DeadLetterQuery, Progress, Skip, parse_entry_id
from admin.errors import InvalidInput
from conveyor import database

log = logging.getLogger(__name__)


REQUESTS_TABLE: Final = f"{database.CATALOG_SCHEMA}.reprocess_requests"
"""Reprocess requests by idempotency key (catalog revision catalog_0002)."""
_LOCK_CLASS: Final = "conveyor.reprocess"
_COUNTS: Final = ("done", "total", "requeued", "duplicates", "skipped")

T = TypeVar("T")


def request_fingerprint(
    topic: str,
    entry_ids: Sequence[str],
    query: DeadLetterQuery | None,
    prefix: str,
) -> str:
    """A digest of what a reprocess request selects, to tell a repeated request from another
    one under the same idempotency key (dry run and rate limit do not change what it selects).
    `prefix` is the deployment's: one key used by two deployments names two requests."""
    text = json.dumps(
        {
            "prefix": prefix,
            "topic": topic,
            "entry_ids": sorted({parse_entry_id(e) for e in entry_ids}),
            "filter": None if query is None else query.fingerprint(prefix),
        },
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()


async def once(
    conn: asyncpg.Connection,
    *,
    key: str,
    principal: str,
    request_hash: str,
    work: Callable[[], Awaitable[Progress]],
) -> Progress:
    """Run `work` as the request under idempotency key `key`: serialized with other calls using
    the key (a session lock, released also when the connection goes back to the pool or dies),
    answered from the stored outcome once one call has finished it. A call that crashed or was
    cancelled stored nothing, so the next call with the key carries on from where it stopped.
    The same key with another `request_hash` or principal is InvalidInput."""
    await conn.execute("SELECT pg_advisory_lock(hashtext($1), hashtext($2))", _LOCK_CLASS, key)
    try:
        stored = await _claim(conn, key, principal, request_hash)
        if stored is not None:
            return stored
        final = await work()
        outcome = json.dumps(
            {k: getattr(final, k) for k in _COUNTS} | {"skips": [asdict(s) for s in final.skips]}
        )
        # Shielded: a call cancelled now has done all its work, and the next one should say so.
        await shielded(
            conn.execute(
                f"UPDATE {REQUESTS_TABLE} SET outcome = $2::text::jsonb, finished_at = now() "
                "WHERE idempotency_key = $1 AND finished_at IS NULL",
                key,
                outcome,
            )
        )
        return final
    finally:
        await _unlock(conn, key)


async def shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end even if the caller is cancelled meanwhile; the cancellation then
    goes on once it has finished, so a cancelled call stops between entries, never inside one."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("reprocess: entry failed after the call was cancelled: %r", task.exception())
        raise


async def answered(
    conn: asyncpg.Connection, *, key: str, principal: str, request_hash: str
) -> Progress | None:
    """The stored outcome (marked replayed) of the finished request under idempotency key `key`,
    or None when no call with the key has finished. Read before anything else about the request:
    a repeat is answered as the first call was, whatever happened to its dead letters since.
    The same key with another `request_hash` or principal is InvalidInput."""
    row = await conn.fetchrow(
        f"SELECT principal, request_hash, outcome::text AS outcome, finished_at "
        f"FROM {REQUESTS_TABLE} WHERE idempotency_key = $1",
        key,
    )
    return None if row is None else _answer(row, key, principal, request_hash)


async def _claim(conn: asyncpg.Connection, key: str, principal: str, hash_: str) -> Progress | None:
    """Register the request under `key`; the stored outcome if a call with it already finished."""
    await conn.execute(
        f"INSERT INTO {REQUESTS_TABLE} (idempotency_key, principal, request_hash) "
        "VALUES ($1, $2, $3) ON CONFLICT (idempotency_key) DO NOTHING",
        key,
        principal,
        hash_,
    )
    return await answered(conn, key=key, principal=principal, request_hash=hash_)


def _answer(row: asyncpg.Record, key: str, principal: str, hash_: str) -> Progress | None:
    if row["principal"] != principal or row["request_hash"] != hash_:
        raise InvalidInput(
            "this idempotency key was used for a different reprocess request; use a new key",
            field="idempotency_key",
            value=key[:64],
        )
    if row["finished_at"] is None:
        return None
    stored = json.loads(row["outcome"])
    return Progress(
        **{k: int(stored.get(k, 0)) for k in _COUNTS},
        finished=True,
        skips=tuple(_skip(s) for s in stored.get("skips", [])),  # absent in older outcomes
        replayed=True,
    )


def _skip(stored: Mapping[str, Any]) -> Skip:
    """A stored skip; a field it lacks reads as "" (not recorded)."""
    return Skip(
        entry_id=str(stored.get("entry_id", "")),
        reason=str(stored.get("reason", "")),
        detail=str(stored.get("detail", "")),
    )


async def _unlock(conn: asyncpg.Connection, key: str) -> None:
    try:
        await conn.execute(
            "SELECT pg_advisory_unlock(hashtext($1), hashtext($2))", _LOCK_CLASS, key
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        # The pool's reset (or the connection's end) releases the lock anyway.
        log.warning("reprocess: could not release the idempotency lock: %r", exc)


class Pacer:
    """Spaces calls to `wait` at least 1/rate seconds apart (no wait when rate is 0)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next: float | None = None

    async def wait(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        if self._next is not None and self._next > now:
            await asyncio.sleep(self._next - now)
            now = self._next
        self._next = now + self._interval


def stop_if_cancelled() -> None:
    """Raise CancelledError if this task was cancelled but the cancellation got lost on the way
    (on Python 3.11, asyncio.wait_for inside a client library drops one that arrives as its
    inner call completes), so a cancelled call still stops at the next entry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
