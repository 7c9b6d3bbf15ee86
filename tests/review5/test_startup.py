"""Start-up of `conveyor relay` and `conveyor consume`: what a failed or interrupted start says,
its exit code, and that no secret reaches stderr."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator

import pytest

from admin.cli.options import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from tests.integration.conftest import Case
from tests.integration.test_startup_failures import args_of, env_of, failed_in_one_line
from tests.processes import run_conveyor, start_conveyor, stop
from tests.servers import RedisServer, free_port

KINDS = ("relay", "consume")
SECRET = "hunter2zz"


@pytest.fixture
def read_only_redis() -> Iterator[RedisServer]:
    """A Redis replica of a master that does not exist: it answers PING, refuses every write."""
    server = RedisServer()
    server.start()
    try:
        done = subprocess.run(
            ["redis-cli", "-p", str(server.port), "REPLICAOF", "127.0.0.1", str(free_port())],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert "OK" in done.stdout
        yield server
    finally:
        server.close()


# A read-only Redis (a replica, a failover target that was demoted) answers PING, so it passes the
# start-up check; the relay then starts and retries every batch forever (READONLY), while the
# consumer ends with "PostgreSQL or Redis failed while the process started ...: start it again once
# both answer" -- neither naming the address or --redis-url, and advice that cannot help (both
# answer). Expected, as promised for every start-up failure: one line naming the Redis address and
# --redis-url, exit 7, and relay and consumer behaving the same way. A user pointed at the replica
# by mistake otherwise gets a relay that looks healthy and publishes nothing.
@pytest.mark.parametrize("kind", KINDS)
async def test_read_only_redis_fails_the_start_naming_the_address(
    case: Case, catalog_cleanup: None, read_only_redis: RedisServer, kind: str
) -> None:
    env = env_of(case.env, case.schema) | {"CONVEYOR_REDIS_URL": read_only_redis.url}
    proc = start_conveyor(args_of(kind, case.schema, "--startup-timeout", "1s"), env)
    try:
        out, _ = proc.communicate(timeout=12)
    except subprocess.TimeoutExpired:
        out = stop(proc, signal.SIGINT)
    assert proc.returncode == EXIT_UNAVAILABLE, out
    line = failed_in_one_line(subprocess.CompletedProcess([], proc.returncode, "", out))
    assert read_only_redis.url in line, line
    assert "--redis-url" in line, line


# Passwords in the URL's query string are accepted by asyncpg (`?password=`) and redis-py
# (`?password=`), yet the start-up line prints the URL whole. Expected: the password masked as
# it is in user:password@host form. Users paste these lines into tickets and chats.
@pytest.mark.parametrize(
    ("variable", "url"),
    [
        (
            "CONVEYOR_DATABASE_URL",
            f"postgresql://postgres@127.0.0.1:{{port}}/postgres?password={SECRET}",
        ),
        ("CONVEYOR_REDIS_URL", f"redis://127.0.0.1:{{port}}/0?password={SECRET}"),
    ],
)
async def test_a_password_in_the_query_string_is_masked(
    case: Case, variable: str, url: str
) -> None:
    env = env_of(case.env, case.schema) | {variable: url.format(port=free_port())}
    result = run_conveyor(args_of("relay", case.schema, "--startup-timeout", "0"), env)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert SECRET not in result.stderr, result.stderr


# A password holding a raw `@` (drivers take the last `@` as the end of the user part) is only
# partly masked: `postgres:***@zz@127.0.0.1` shows its tail. Expected: none of it shown.
@pytest.mark.parametrize(
    ("variable", "url"),
    [
        (
            "CONVEYOR_DATABASE_URL",
            "postgresql://postgres:hunter2@zzsecret@127.0.0.1:{port}/postgres",
        ),
        ("CONVEYOR_REDIS_URL", "redis://:hunter2@zzsecret@127.0.0.1:{port}/0"),
    ],
)
async def test_a_password_with_an_at_sign_is_masked_whole(
    case: Case, variable: str, url: str
) -> None:
    env = env_of(case.env, case.schema) | {variable: url.format(port=free_port())}
    result = run_conveyor(args_of("relay", case.schema, "--startup-timeout", "0"), env)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "zzsecret" not in result.stderr, result.stderr


# A mistyped database URL (`postgresql//` for `postgresql://`) is echoed whole in the usage
# error, password included. Expected: exit 2 naming --database-url, with the password masked.
async def test_a_malformed_database_url_does_not_print_its_password(case: Case) -> None:
    url = f"postgresql//postgres:{SECRET}@127.0.0.1:5432/postgres"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": url}
    result = run_conveyor(args_of("relay", case.schema, "--startup-timeout", "0"), env)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert SECRET not in result.stderr, result.stderr


# A port that is not a number gives `invalid literal for int() with base 10: 'x'`: no option
# named, nothing to act on. Expected: the line names --database-url (as every other URL problem
# does).
async def test_a_database_url_with_a_bad_port_names_the_option(case: Case) -> None:
    env = env_of(case.env, case.schema) | {
        "CONVEYOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:x/postgres"
    }
    result = run_conveyor(args_of("relay", case.schema, "--startup-timeout", "0"), env)
    assert result.returncode == EXIT_USAGE, result.stderr
    line = failed_in_one_line(result)
    assert "database" in line.lower() and "int()" not in line, line


# SIGTERM while the process waits for PostgreSQL at start kills it by the signal's default
# action (exit 143, nothing logged). docs/configuration.md documents exit 0 for `relay` and
# `consume` after SIGTERM or SIGINT, and operations.md "Stop with SIGTERM ... exits 0";
# orchestrators (systemd, Kubernetes during a rollout) send SIGTERM to a pod still waiting for
# its database and read a non-zero, unexplained code as a crash.
@pytest.mark.parametrize("kind", KINDS)
async def test_sigterm_during_the_start_up_wait_exits_0(case: Case, kind: str) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": url}
    proc = start_conveyor(args_of(kind, case.schema, "--startup-timeout", "2m"), env)
    assert proc.stdout is not None
    shown = ""
    for line in proc.stdout:  # the wait has begun once it logs its first retry
        shown += line
        if "did not answer" in line:
            break
    await asyncio.sleep(0.5)
    shown += stop(proc, signal.SIGTERM)
    assert "Traceback" not in shown, shown
    assert proc.returncode == EXIT_OK, shown
