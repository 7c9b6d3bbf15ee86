"""How a running relay or consumer logs a dependency that stopped answering: one line when the
outage begins, one every OUTAGE_LOG_INTERVAL while it lasts and one when it ends; the failures in
between, and asyncpg's own reports of them, go to DEBUG."""

from __future__ import annotations

import logging
import time

OUTAGE_LOG_INTERVAL = 30.0
"""Seconds between the warnings that PostgreSQL or Redis is still unreachable (checks run every
second or so; one line per check would bury everything else)."""

_POOL_FLOOR = "Failed to restore the pool connection floor"
"""How asyncpg's pool begins the WARNING, with a traceback, it logs per failed reconnect."""

_LOST = ("08", "57P01", "57P02", "57P03")
"""SQLSTATEs of a connection that failed or was dropped: class 08 (connection exception), admin
and crash shutdown, and "cannot connect now" (starting up or shutting down)."""


def unreachable(exc: BaseException) -> bool:
    """`exc`, raised by asyncpg, says PostgreSQL could not be reached or dropped the connection,
    rather than that it refused a statement or was slow (a TimeoutError may be Redis's, too)."""
    if isinstance(exc, OSError):  # refused, reset, unexpected connection_lost()
        return not isinstance(exc, TimeoutError)
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_LOST)
    # asyncpg's InterfaceError on a connection lost earlier (the driver is not imported here)
    return type(exc).__module__.startswith("asyncpg") and "connection is closed" in str(exc)


def describe(exc: BaseException) -> str:
    """`Class: message`, or the class alone when the message is empty."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Outage:
    """The log of one dependency's outages, written to `log` by the process named `process`."""

    def __init__(self, name: str, address: str, log: logging.Logger, process: str) -> None:
        self.name = name
        self.address = address
        """The dependency's URL with any password masked."""
        self.since: float | None = None
        """When the current outage began (monotonic seconds); None while it answers."""
        self._log = log
        self._process = process
        self._logged = 0.0

    def failed(self, exc: BaseException) -> None:
        """The dependency did not answer."""
        now = time.monotonic()
        if self.since is None:
            self.since = self._logged = now
            self._log.warning(
                "%s at %s unreachable (%s); the %s retries until it answers",
                self.name,
                self.address,
                describe(exc),
                self._process,
            )
        elif now - self._logged >= OUTAGE_LOG_INTERVAL:
            self._logged = now
            self._log.warning(
                "%s at %s still unreachable after %.0f s (%s)",
                self.name,
                self.address,
                now - self.since,
                describe(exc),
            )

    def answered(self) -> None:
        """The dependency answered."""
        if self.since is not None:
            self._log.info(
                "%s at %s answers again after %.0f s",
                self.name,
                self.address,
                time.monotonic() - self.since,
            )
            self.since = None


class _PoolFloorAtDebug(logging.Filter):
    """Turns asyncpg's pool reconnect warning (a traceback per attempt while PostgreSQL is away)
    into a DEBUG record when PostgreSQL is unreachable: the outage line says it once. A
    reconnect PostgreSQL refuses (a login it no longer accepts) keeps its warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (
            record.levelno > logging.DEBUG
            and str(record.msg).startswith(_POOL_FLOOR)
            and (exc is None or unreachable(exc))  # a refused login, say, stays a warning
        ):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_pool_reconnects() -> None:
    """Log asyncpg's failed pool reconnects at DEBUG from now on (idempotent)."""
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolFloorAtDebug) for f in pool_log.filters):
        pool_log.addFilter(_PoolFloorAtDebug())
