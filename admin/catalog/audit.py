"""The audit log of admin actions and denials, in the catalog's `conveyor.audit` table.

Mutating calls record their row with `record(..., conn=conn)` inside the transaction that makes
the change, so the change and its audit row commit or roll back together; a failure to write the
row fails the call.

Denials (bad credentials, missing scope) go through `record_denial`, which never fails or stalls
the RPC it describes: database errors are logged and swallowed, and a write gives up after
`DENIAL_WRITE_TIMEOUT` seconds. Denials are rate-limited per source (the peer address without its
port, so reconnecting does not reset the count): at most `denial_limit` rows per source per
`denial_window` seconds. Further denials in the window are counted, not written; the first denial
from that source after the window has passed writes one summary row first (action
`denials_suppressed`, reason "N more denials suppressed", detail `suppressed` = N), then its own.
A source that never comes back has its count logged instead (on eviction or `close()`), not written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from admin.catalog.records import AuditEntry
from conveyor import wire
from conveyor.database import AUDIT_TABLE, CATALOG_SCHEMA

log = logging.getLogger(__name__)

DENIAL_WRITE_TIMEOUT = 2.0
"""Seconds a denial's audit write may take before it is abandoned (and logged)."""
SUPPRESSED_ACTION = "denials_suppressed"
"""Action of the summary row written for denials over the rate limit."""
MAX_SOURCES = 10_000
"""Sources tracked at once; past it, sources whose window has ended are forgotten first."""

_AUDIT = f"{CATALOG_SCHEMA}.{AUDIT_TABLE}"
_INSERT = (
    f"INSERT INTO {_AUDIT} (principal, action, target_ids, reason, outcome, detail) "
    "VALUES ($1, $2, $3::text[], $4, $5, $6::text::jsonb)"
)
# The deployment goes in `detail.key_prefix`, as every version has written it; the `key_prefix`
# column is generated from it (catalog_0005), so older processes running beside this one during a
# rollout still write and read rows of the right deployment.
_SHOWN_MAX = 1000
"""Most audit rows shown for one set of targets (the newest)."""
# `$6::text::jsonb`: the detail goes over as JSON text, whatever jsonb codec the pool has set.


@dataclass(slots=True)
class _Window:
    """Denials seen from one source in its current window."""

    started: float
    written: int = 0
    suppressed: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    """Principal, action and detail of the last suppressed denial, for the summary row."""


class AuditLog:
    """Writes the audit rows of one deployment (key prefix) to the catalog, through `pool` or the
    caller's connection."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        key_prefix: str,
        *,
        denial_limit: int = 10,
        denial_window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`key_prefix` names the deployment writing the rows (in `detail.key_prefix`), so one
        deployment's view of an entry id does not show another's actions on the same id."""
        if denial_limit < 1:
            raise ValueError(f"denial_limit must be >= 1, got {denial_limit!r}")
        if not denial_window > 0:
            raise ValueError(f"denial_window must be > 0 seconds, got {denial_window!r}")
        self._pool = pool
        self._limit = denial_limit
        self._window = denial_window
        self._clock = clock
        self._sources: dict[str, _Window] = {}
        self.key_prefix = wire.validate_prefix(key_prefix)

    async def record(
        self,
        *,
        principal: str,
        action: str,
        target_ids: Sequence[str] = (),
        reason: str | None = None,
        outcome: str,
        detail: Mapping[str, Any] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> None:
        """Insert one audit row; through `conn` (and its open transaction) when given.

        Errors propagate: an action that cannot be audited must not happen.
        """
        text = json.dumps({**(detail or {}), "key_prefix": self.key_prefix})
        args = (principal, action, list(target_ids), reason, outcome, text)
        if conn is not None:
            await conn.execute(_INSERT, *args)
        else:
            await self._pool.execute(_INSERT, *args)

    async def entries_for(self, target_ids: Sequence[str]) -> list[AuditEntry]:
        """This deployment's audit rows naming any of `target_ids` (see `audit_entries`)."""
        return await audit_entries(self._pool, self.key_prefix, target_ids)

    async def record_denial(
        self,
        *,
        source: str,
        principal: str,
        action: str,
        outcome: str,
        reason: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """Audit a denied call from `source` unless over its rate limit; True if a row was written.

        Never raises for database trouble and never waits longer than `DENIAL_WRITE_TIMEOUT`.
        """
        row_detail = {"source": source, **(detail or {})}
        now = self._clock()
        window = self._sources.get(source)
        summary: _Window | None = None
        if window is None or now - window.started >= self._window:
            if window is not None and window.suppressed:
                summary = window
            window = self._open_window(source, now)
        if window.written >= self._limit:
            if not window.suppressed:
                log.warning(
                    "audit: suppressing further denials source=%s window=%ss", source, self._window
                )
            window.suppressed += 1
            window.last = {"principal": principal, "action": action, "detail": row_detail}
            return False
        window.written += 1
        try:
            async with asyncio.timeout(DENIAL_WRITE_TIMEOUT):
                if summary is not None:
                    await self._record_summary(source, summary)
                await self.record(
                    principal=principal,
                    action=action,
                    reason=reason,
                    outcome=outcome,
                    detail=row_detail,
                )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.error(
                "audit: could not record denial source=%s principal=%s action=%s: %r",
                source,
                principal,
                action,
                exc,
            )
            return False
        except Exception:  # the denial is answered whatever its audit write ran into
            log.exception(
                "audit: could not record denial source=%s principal=%s action=%s",
                source,
                principal,
                action,
            )
            return False
        return True

    def close(self) -> None:
        """Log the counts of denials still suppressed, which no later denial will summarise now."""
        for source, window in self._sources.items():
            _log_unwritten(source, window)
        self._sources.clear()

    def _open_window(self, source: str, now: float) -> _Window:
        if source not in self._sources and len(self._sources) >= MAX_SOURCES:
            self._evict(now)
        # Re-inserted, not updated in place, so the dict stays ordered by window start.
        self._sources.pop(source, None)
        window = _Window(started=now)
        self._sources[source] = window
        return window

    def _evict(self, now: float) -> None:
        """Forget ended windows; if every window is live (a flood from many sources), the oldest."""
        ended = [s for s, w in self._sources.items() if now - w.started >= self._window]
        victims = ended or list(self._sources)[: max(1, len(self._sources) // 10)]
        for source in victims:
            _log_unwritten(source, self._sources.pop(source))

    async def _record_summary(self, source: str, window: _Window) -> None:
        last = window.last
        await self.record(
            principal=str(last["principal"]),
            action=SUPPRESSED_ACTION,
            reason=f"{window.suppressed} more denials suppressed",
            outcome="suppressed",
            detail={
                **last["detail"],
                "source": source,
                "suppressed": window.suppressed,
                "window_seconds": self._window,
                "last_action": last["action"],
            },
        )


async def audit_entries(
    pool: asyncpg.Pool, prefix: str, target_ids: Sequence[str]
) -> list[AuditEntry]:
    """The audit rows of the deployment with key prefix `prefix` naming any of `target_ids`,
    oldest first (the newest 1000 at most). Rows written before the deployment was recorded
    (`key_prefix` '') belong to no one deployment and are shown to every one."""
    if not target_ids:
        return []
    rows = await pool.fetch(
        f"SELECT at, principal, action, target_ids, reason, outcome FROM {_AUDIT} "
        "WHERE key_prefix IN ($1, '') AND target_ids && $2::text[] ORDER BY id DESC LIMIT $3",
        prefix,
        list(target_ids),
        _SHOWN_MAX,
    )
    return [
        AuditEntry(
            at=r["at"],
            principal=r["principal"],
            action=r["action"],
            target_ids=tuple(r["target_ids"]),
            reason=r["reason"],
            outcome=r["outcome"],
        )
        for r in reversed(rows)
    ]


def _log_unwritten(source: str, window: _Window) -> None:
    if window.suppressed:
        log.warning(
            "audit: %d denials suppressed and not written source=%s", window.suppressed, source
        )
