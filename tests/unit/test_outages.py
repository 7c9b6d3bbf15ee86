"""How a running process logs a dependency's outage, and asyncpg's reports of one."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from conveyor import outages
from conveyor.outages import Outage, quiet_pool_reconnects, unreachable

ADDRESS = "postgresql://app:***@db:5432/app"


def test_an_outage_is_logged_when_it_begins_every_30_s_and_when_it_ends(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(outages.time, "monotonic", lambda: now[0])
    outage = Outage("postgres", ADDRESS, logging.getLogger("t"), "consumer")
    with caplog.at_level(logging.DEBUG, logger="t"):
        for second in range(61):  # failing every second for a minute
            now[0] = 100.0 + second
            outage.failed(ConnectionRefusedError(111, "Connection refused"))
        now[0] = 170.0
        outage.answered()
        outage.answered()
    assert [r.getMessage() for r in caplog.records] == [
        f"postgres at {ADDRESS} unreachable (ConnectionRefusedError: [Errno 111] Connection "
        "refused); the consumer retries until it answers",
        f"postgres at {ADDRESS} still unreachable after 30 s (ConnectionRefusedError: [Errno 111] "
        "Connection refused)",
        f"postgres at {ADDRESS} still unreachable after 60 s (ConnectionRefusedError: [Errno 111] "
        "Connection refused)",
        f"postgres at {ADDRESS} answers again after 70 s",
    ]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"), True),
        (asyncpg.DeadlockDetectedError("deadlock detected"), False),
        (asyncpg.InterfaceError("another operation is in progress"), False),
        (TimeoutError(), False),
    ],
)
def test_only_errors_of_reaching_postgres_count_as_an_outage(
    exc: BaseException, expected: bool
) -> None:
    assert unreachable(exc) is expected


def _pool_reconnect_fails(pool_log: logging.Logger) -> None:
    try:
        raise ConnectionError("unexpected connection_lost() call")
    except ConnectionError:
        pool_log.warning("Failed to restore the pool connection floor; retrying", exc_info=True)


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_asyncpg_pool_reconnect_tracebacks_are_debug_output(
    caplog: pytest.LogCaptureFixture, level: int
) -> None:
    quiet_pool_reconnects()
    quiet_pool_reconnects()
    pool_log = logging.getLogger("asyncpg.pool")
    with caplog.at_level(level):
        _pool_reconnect_fails(pool_log)
        pool_log.warning("Pool.close() is taking over 60 seconds to complete.")
    shown = [(r.levelname, r.exc_info is not None) for r in caplog.records]
    reconnect = [("DEBUG", True)] if level == logging.DEBUG else []
    assert shown == [*reconnect, ("WARNING", False)]
