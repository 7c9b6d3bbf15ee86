"""Every PostgreSQL connection a Conveyor process holds names it in pg_stat_activity
(`conveyor <role> <subject>`), unless the user named the connections: `application_name=` in
the database URL wins, then PGAPPNAME. Each process's connections are found by their client
ports, so a connection left unnamed shows up too."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest

from conveyor import database
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects
from tests.integration.test_ops_plane import SERVING, check, port_of
from tests.processes import start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow

ROUTER = "tests.integration.effects_router:router"
NO_PGAPPNAME = {"PGAPPNAME": ""}
"""Keeps a PGAPPNAME of the machine's environment from naming the processes under test."""


def documented_query() -> str:
    """The query docs/operations.md gives for Conveyor's connections in pg_stat_activity."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text("utf-8")
    section = text.split("## Conveyor's connections in PostgreSQL", 1)[1]
    return section.split("```sql\n", 1)[1].split("```", 1)[0]


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


@asynccontextmanager
async def serving(
    *commands: tuple[list[str], dict[str, str]],
) -> AsyncIterator[list[subprocess.Popen[str]]]:
    """`conveyor` processes started together, each SERVING on its gRPC port; stopped after."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for args, env in commands:
            procs.append(start_conveyor([*args, "--allow-unauthenticated"], env))
        ports = [port_of(proc, []) for proc in procs]

        async def all_serving() -> bool:
            return all(check(port, "") == SERVING for port in ports)

        await wait_until(all_serving, timeout=60, what="the processes serving")
        yield procs
    finally:
        for proc in procs:
            stop(proc)


async def names_of(
    pg: asyncpg.Connection, database_url: str, proc: subprocess.Popen[str], at_least: int
) -> set[str]:
    """The application_name of every PostgreSQL connection `proc` holds, once it holds
    `at_least` and pg_stat_activity shows each of them."""
    server_port = urlsplit(database_url).port or 5432
    seen: dict[int, str] = {}

    async def all_shown() -> bool:
        ports = [
            c.laddr.port
            for c in psutil.Process(proc.pid).net_connections("tcp")
            if c.raddr and c.raddr.port == server_port and c.status == psutil.CONN_ESTABLISHED
        ]
        rows = await pg.fetch(
            "SELECT client_port, application_name FROM pg_stat_activity "
            "WHERE client_port = ANY($1::int[])",
            ports,
        )
        seen.clear()
        seen.update((row["client_port"], row["application_name"]) for row in rows)
        return len(ports) >= at_least and len(seen) == len(ports)

    await wait_until(all_shown, timeout=60, what="the process's connections in pg_stat_activity")
    return set(seen.values())


async def test_each_connection_names_its_process_and_role(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    member = f"m-{case.prefix}"
    env = case.env | NO_PGAPPNAME | {"TEST_EFFECTS_SCHEMA": case.schema}
    consume = ["consume", "--group", "g", "--consumer", member, "--router", ROUTER]
    consume += ["--ledger-schema", case.schema]
    async with serving((["relay"], env), (consume, env)) as (relay, consumer):
        relay_name = await case.pg.fetchval(
            "SELECT relay_name FROM conveyor.relays WHERE key_prefix = $1", case.prefix
        )
        relay_names = await names_of(case.pg, case.database_url, relay, 3)
        consumer_names = await names_of(case.pg, case.database_url, consumer, 2)
        listed = {row["application_name"] for row in await case.pg.fetch(documented_query())}
    # The relay is named as the registry lists it, `host-pid`: its pool, LISTEN and ops plane.
    assert relay_name.endswith(f"-{relay.pid}")
    assert relay_names == {
        f"conveyor relay {relay_name}",
        f"conveyor relay listen {relay_name}",
        f"conveyor ops {relay_name}",
    }
    assert consumer_names == {f"conveyor consume g/{member}", f"conveyor ops g/{member}"}
    assert relay_names | consumer_names <= listed


async def test_a_name_the_user_gave_is_kept(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    in_url, in_env = f"url-{case.prefix}", f"env-{case.prefix}"
    # The URL's application_name wins over PGAPPNAME; PGAPPNAME over Conveyor's names.
    relay_env = case.env | {
        "CONVEYOR_DATABASE_URL": with_query(case.database_url, f"application_name={in_url}"),
        "PGAPPNAME": in_env,
    }
    consumer_env = case.env | {"PGAPPNAME": in_env, "TEST_EFFECTS_SCHEMA": case.schema}
    consume = ["consume", "--group", "g", "--router", ROUTER, "--ledger-schema", case.schema]
    async with serving((["relay"], relay_env), (consume, consumer_env)) as (relay, consumer):
        assert await names_of(case.pg, case.database_url, relay, 3) == {in_url}
        assert await names_of(case.pg, case.database_url, consumer, 2) == {in_env}


@pytest.mark.parametrize("given", [None, "mine"], ids=["conveyor's", "the user's"])
async def test_migrations_connect_named(
    database_url: str, schema: str, pg: asyncpg.Connection, given: str | None
) -> None:
    # Hold the lock `migrate up` takes for the schema, to catch its connection waiting.
    key = f"conveyor.migrate.{schema}"
    await pg.execute("SELECT pg_advisory_lock(hashtext($1))", key)
    url = database_url if given is None else with_query(database_url, f"application_name={given}")
    args = ["migrate", "up", "--schema", schema, "--database-url", url]
    proc = start_conveyor(args, NO_PGAPPNAME)
    try:
        waiting: list[str] = []

        async def blocked() -> bool:
            waiting[:] = (
                await pg.fetchval(
                    "SELECT array_agg(application_name) FROM pg_stat_activity "
                    "WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                )
                or []
            )
            return bool(waiting) or proc.poll() is not None

        await wait_until(blocked, timeout=60, what="migrate up waiting for the schema's lock")
        await pg.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0, out
    assert waiting == [given or "conveyor migrate"]


async def test_a_long_name_keeps_its_prefix_and_its_end(database_url: str) -> None:
    subject = "a-very-long-host-name-of-some-cloud-provider.example.internal-4242"
    named = database.server_settings(database_url, "relay listen", subject, environ={})
    conn = await asyncpg.connect(database_url, server_settings=named)
    try:
        shown = await conn.fetchval(
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
    finally:
        await conn.close()
    assert shown == named["application_name"]
    assert shown.startswith("conveyor relay listen a-very") and shown.endswith("internal-4242")
    assert ".." in shown and len(shown) <= 63
