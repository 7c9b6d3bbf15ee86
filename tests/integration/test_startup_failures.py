"""A relay or consumer that cannot start says why in one line, exits with the documented code and
leaves nothing behind: Redis or PostgreSQL unreachable (7), a schema not migrated (6), its gRPC
port taken (8). A dependency that comes up while the process waits lets it start."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from admin.cli.options import EXIT_ADDRESS_IN_USE, EXIT_PRECONDITION, EXIT_UNAVAILABLE
from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.startup_support import (
    KINDS,
    args_of,
    env_of,
    failed_in_one_line,
    output_until,
)
from tests.processes import run_conveyor, start_conveyor, stop
from tests.servers import RedisServer, free_port


async def left_behind(case: Case) -> tuple[list[Any], int]:
    """Redis keys under the test's prefix, and catalog registry rows of the test's prefix."""
    keys = [k async for k in case.redis.scan_iter(match=f"{case.prefix}:*")]
    registered = await case.pg.fetchval(
        "SELECT count(*) FROM conveyor.consumers WHERE key_prefix = $1", case.prefix
    )
    return keys, int(registered)


@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_redis_exits_7_naming_the_address(case: Case, kind: str) -> None:
    address = f"redis://127.0.0.1:{free_port()}/0"
    env = env_of(case.env, case.schema) | {"CONVEYOR_REDIS_URL": address}
    result = run_conveyor(args_of(kind, case.schema, "--startup-timeout", "1s"), env)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    line = failed_in_one_line(result)
    assert line.startswith(f"conveyor: error: Redis at {address} did not answer within 1 s (")
    assert line.endswith("start it, or set --redis-url / CONVEYOR_REDIS_URL")
    assert f"WARNING admin.ops.startup: Redis at {address} did not answer" in result.stderr
    assert await left_behind(case) == ([], 0)


@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_postgres_exits_7_at_once_with_no_timeout(case: Case, kind: str) -> None:
    address = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/postgres"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": address}
    result = run_conveyor(args_of(kind, case.schema, "--startup-timeout", "0"), env)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    line = failed_in_one_line(result)
    shown = address.replace(":secret@", ":***@")
    assert line.startswith(f"conveyor: error: PostgreSQL at {shown} did not answer (")
    assert line.endswith("start it, or set --database-url / CONVEYOR_DATABASE_URL")
    assert "secret" not in result.stderr
    assert await left_behind(case) == ([], 0)


async def test_a_database_that_refuses_is_not_waited_for(case: Case) -> None:
    address = case.database_url.rsplit("/", 1)[0] + "/no_such_database"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": address}
    result = run_conveyor(args_of("consume", case.schema, "--startup-timeout", "1m"), env)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    line = failed_in_one_line(result)
    assert "answered with an error (InvalidCatalogNameError" in line
    assert line.endswith("fix --database-url / CONVEYOR_DATABASE_URL")
    assert "did not answer" not in result.stderr


@pytest.mark.parametrize("kind", KINDS)
async def test_unmigrated_schema_exits_6_naming_the_command(case: Case, kind: str) -> None:
    other = case.schema + "x"  # never created, while the catalog is at head
    result = run_conveyor(args_of(kind, other), env_of(case.env, case.schema))
    assert result.returncode == EXIT_PRECONDITION, result.stderr
    line = failed_in_one_line(result)
    assert line == (
        f"conveyor: error: schema '{other}' has no Conveyor tables: "
        f"run `conveyor migrate up --schema {other}`"
    )
    assert await left_behind(case) == ([], 0)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", KINDS)
async def test_taken_grpc_port_exits_8_before_creating_anything(
    case: Case, taken_port: int, kind: str
) -> None:
    args = [*args_of(kind, case.schema), "--grpc-addr", f"127.0.0.1:{taken_port}"]
    result = run_conveyor(args, env_of(case.env, case.schema))
    assert result.returncode == EXIT_ADDRESS_IN_USE, result.stderr
    line = failed_in_one_line(result)
    assert line == (
        f"conveyor: error: cannot listen on 127.0.0.1:{taken_port} (address already in use): "
        "another relay or consumer may be running here; give this one --grpc-addr HOST:PORT "
        "(or CONVEYOR_GRPC_ADDR)"
    )
    assert "add_port" not in result.stderr
    assert "GRPC_VERBOSITY" not in result.stderr
    assert await left_behind(case) == ([], 0)


NO_AUTH = "AdminService can authenticate nobody"


@pytest.mark.parametrize(
    ("kind", "auth", "warned"),
    [
        ("consume", [], True),
        ("relay", [], True),
        ("relay", ["--allow-unauthenticated"], False),
        ("consume", ["--tokens-file"], False),
    ],
)
async def test_a_process_no_one_can_call_says_so_at_start(
    case: Case, catalog_cleanup: None, tmp_path: Path, kind: str, auth: list[str], warned: bool
) -> None:
    if auth == ["--tokens-file"]:
        tokens = tmp_path / "tokens"
        tokens.write_text("ops read " + "ab" * 32 + "\n")
        auth = ["--tokens-file", str(tokens)]
    env = case.env | {"TEST_EFFECTS_SCHEMA": case.schema}
    proc = start_conveyor(args_of(kind, case.schema, *auth), env)
    try:
        shown = output_until(proc, "started:")
    finally:
        shown += stop(proc)
    assert proc.returncode == 0, shown
    assert (NO_AUTH in shown) is warned, shown
    if warned:
        assert "`conveyor token create --principal NAME" in shown and "--tokens-file" in shown
    assert "alembic" not in shown  # Alembic narrates loading its scripts at INFO


@pytest.mark.parametrize("kind", KINDS)
async def test_redis_that_comes_up_during_the_wait_lets_the_process_start(
    case: Case, catalog_cleanup: None, kind: str
) -> None:
    late = RedisServer()  # its port is chosen now; the server starts below
    env = env_of(case.env, case.schema) | {"CONVEYOR_REDIS_URL": late.url}
    proc = start_conveyor(args_of(kind, case.schema, "--startup-timeout", "1m"), env)
    waited = ""
    try:
        waited = output_until(proc, f"Redis at {late.url} did not answer")
        late.start()
        waited += output_until(proc, "started:")
        if kind == "consume":
            stream = wire.Keys("identity", case.prefix).events
            assert "g" in await late_groups(late.url, stream)
    finally:
        waited += stop(proc)
        late.close()
    assert proc.returncode == 0, waited
    assert "conveyor: error" not in waited


async def late_groups(url: str, stream: str) -> list[str]:
    """Names of the groups of `stream` on the Redis at `url`."""
    client = aioredis.from_url(url, decode_responses=True)
    try:
        return [g["name"] for g in await client.xinfo_groups(stream)]
    finally:
        await client.aclose()
