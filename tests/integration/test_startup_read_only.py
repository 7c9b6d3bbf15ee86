"""A consumer pointed at a PostgreSQL that refuses writes leaves nothing behind."""

from __future__ import annotations

from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.startup_support import args_of, env_of
from tests.processes import run_conveyor


async def test_a_read_only_postgres_fails_the_start_before_groups_are_created(
    case: Case, catalog_cleanup: None
) -> None:
    # A read replica (here: default_transaction_read_only=on) answers every read of the
    # start-up check: the start still fails, naming --database-url, before the group's
    # consumer groups are created in Redis.
    sep = "&" if "?" in case.database_url else "?"
    read_only = f"{case.database_url}{sep}default_transaction_read_only=on"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": read_only}
    result = run_conveyor(args_of("consume", case.schema), env, timeout=90)
    assert result.returncode == 7, result.stderr
    assert "takes no writes" in result.stderr and "--database-url" in result.stderr
    events = wire.Keys("identity", case.prefix).events
    groups = await case.redis.exists(events) and await case.redis.xinfo_groups(events)
    assert not groups, f"groups left after a failed start: {groups}\n{result.stderr}"
