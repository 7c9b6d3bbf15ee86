"""asyncpg's pool reconnect warnings go to DEBUG only while PostgreSQL is away."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg

from conveyor.outages import _PoolFloorAtDebug, quiet_pool_reconnects

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_pool_reconnect_refused_for_a_login_is_not_hidden_at_debug() -> None:
    # A relay or consumer (both call quiet_pool_reconnects at start) whose pool cannot
    # reconnect because PostgreSQL REFUSES the login (role disabled, password rotated: SQLSTATE
    # 28000/28P01, PostgreSQL answers fine) still shows asyncpg's warning at WARNING: the
    # outage line is never written for such an error (unreachable() is False), so at DEBUG
    # nothing at all tells the operator why connections cannot be reopened.
    role = f"outage_filter_{uuid.uuid4().hex[:10]}"
    pool_log = logging.getLogger("asyncpg.pool")
    had = list(pool_log.filters)
    level = pool_log.level
    records = _Records()
    admin = await asyncpg.connect(ADMIN_DSN)
    pool: asyncpg.Pool | None = None
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        quiet_pool_reconnects()
        pool_log.setLevel(logging.DEBUG)  # so the demoted record is seen, with its level
        pool_log.addHandler(records)
        pool = await asyncpg.create_pool(
            f"postgresql://{role}@127.0.0.1:5432/postgres", min_size=1, max_size=1
        )
        await admin.execute(f"ALTER ROLE {role} NOLOGIN")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        for _ in range(200):  # asyncpg retries the floor after 1 s; at most 20 s
            floor = [r for r in records.records if "connection floor" in str(r.msg)]
            if floor:
                break
            await asyncio.sleep(0.1)
        assert floor, "the pool never tried to restore its connection floor"
        assert floor[0].exc_info is not None
        refused = floor[0].exc_info[1]
        assert isinstance(refused, asyncpg.InvalidAuthorizationSpecificationError), refused
        assert floor[0].levelno == logging.WARNING, (
            f"a refused login logged at {floor[0].levelname}: {refused!r}"
        )
    finally:
        if pool is not None:
            pool.terminate()
        pool_log.removeHandler(records)
        pool_log.setLevel(level)
        for f in list(pool_log.filters):
            if f not in had and isinstance(f, _PoolFloorAtDebug):
                pool_log.removeFilter(f)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
