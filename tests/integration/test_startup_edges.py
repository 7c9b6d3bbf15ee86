"""Start-up of `conveyor relay` and `conveyor consume` at its edges: what a failed or interrupted
start says, its exit code, and that no secret reaches stderr."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from admin.cli.options import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from tests.integration.conftest import Case
from tests.integration.proxies import Proxy
from tests.integration.startup_support import (
    KINDS,
    args_of,
    env_of,
    failed_in_one_line,
    fixture_read_only_redis,  # noqa: F401 - a pytest fixture
    output_until,
)
from tests.pki import make_pki
from tests.processes import CONVEYOR, run_conveyor, start_conveyor, stop
from tests.servers import RedisServer, free_port

SECRET = "hunter2zz"


# A read-only Redis (a replica, a demoted failover target) answers PING; the start-up check also
# writes (and deletes) a key under the prefix, so the process refuses to start at once, naming the
# address and --redis-url, rather than running a relay that publishes nothing.
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
    assert "read only replica" in line and "--redis-url" in line, line
    assert [k async for k in case.redis.scan_iter(match=f"{case.prefix}:*")] == []


# Passwords in the URL's query string (`?password=`, accepted by asyncpg and redis-py) are masked
# as in user:password@host form: users paste these lines into tickets and chats.
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


# A password holding a raw `@` (drivers take the last `@` as the end of the user part) is masked
# whole.
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


# A mistyped database URL (`postgresql//` for `postgresql://`) is a usage error naming
# --database-url, with the password masked.
async def test_a_malformed_database_url_does_not_print_its_password(case: Case) -> None:
    url = f"postgresql//postgres:{SECRET}@127.0.0.1:5432/postgres"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": url}
    result = run_conveyor(args_of("relay", case.schema, "--startup-timeout", "0"), env)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert SECRET not in result.stderr, result.stderr


# A port that is not a number is a usage error naming --database-url (not Python's int()).
async def test_a_database_url_with_a_bad_port_names_the_option(case: Case) -> None:
    env = env_of(case.env, case.schema) | {
        "CONVEYOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:x/postgres"
    }
    result = run_conveyor(args_of("relay", case.schema, "--startup-timeout", "0"), env)
    assert result.returncode == EXIT_USAGE, result.stderr
    line = failed_in_one_line(result)
    assert "database" in line.lower() and "int()" not in line, line


# SIGTERM while the process waits for PostgreSQL at start stops it with exit 0 and a line saying
# so, as it does once running: orchestrators send SIGTERM to a pod still waiting for its database
# and read any other code as a crash.
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
    assert f"stopped by SIGTERM while waiting for PostgreSQL at {url}" in shown, shown


# PostgreSQL answering the start-up check and gone a moment later (a failover, a restart) ends
# the start with the same line as the check (the address and --database-url), exit 7.
@pytest.mark.parametrize("kind", KINDS)
async def test_postgres_lost_right_after_the_check_names_the_option(case: Case, kind: str) -> None:
    proxy = Proxy(make_url(case.database_url).port or 5432, connections=1)
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": url}
    try:
        result = run_conveyor(args_of(kind, case.schema, "--startup-timeout", "1s"), env, 60)
    finally:
        proxy.close()
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    line = failed_in_one_line(result)
    assert "--database-url" in line, line


# Redis answering the check and gone when the consumer creates its groups ends the start naming
# Redis and --redis-url, not "PostgreSQL or Redis".
async def test_redis_lost_right_after_the_check_names_the_option(
    case: Case, catalog_cleanup: None
) -> None:
    proxy = Proxy(make_url(case.redis_url).port or 6379, connections=1)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    env = env_of(case.env, case.schema) | {"CONVEYOR_REDIS_URL": url}
    try:
        result = run_conveyor(args_of("consume", case.schema, "--startup-timeout", "1s"), env, 60)
    finally:
        proxy.close()
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    line = failed_in_one_line(result)
    assert "--redis-url" in line, line
    assert "PostgreSQL or Redis" not in line, line


# `conveyor token create` tells users to send SIGHUP; a process still waiting for PostgreSQL at
# start keeps waiting (and reads the tokens file when it starts).
async def test_sighup_during_the_start_up_wait_does_not_kill_the_process(
    case: Case, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ops read " + "ab" * 32 + "\n")
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": url}
    args = args_of("relay", case.schema, "--startup-timeout", "2m", "--tokens-file", str(tokens))
    proc = start_conveyor(args, env)
    assert proc.stdout is not None
    shown = ""
    for line in proc.stdout:
        shown += line
        if "did not answer" in line:
            break
    proc.send_signal(signal.SIGHUP)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=3)
    alive = proc.poll() is None
    shown += stop(proc, signal.SIGKILL)
    assert alive, f"exit {proc.returncode} after SIGHUP:\n{shown}"


# A running consumer without --tokens-file has nothing to reload: SIGHUP (sent to every conveyor
# process after `conveyor token create`, say) is logged and ignored, and SIGTERM still stops it
# gracefully.
async def test_sighup_to_a_process_without_a_tokens_file_is_ignored(
    case: Case, catalog_cleanup: None
) -> None:
    proc = start_conveyor(args_of("consume", case.schema), env_of(case.env, case.schema))
    shown = output_until(proc, "started:")
    proc.send_signal(signal.SIGHUP)
    shown += output_until(proc, "SIGHUP ignored: nothing to reload")
    shown += stop(proc, signal.SIGTERM)
    assert proc.returncode == EXIT_OK, shown


# A tokens file with no token in it (the header `token create` writes, or an empty file made to
# fill in later) lets AdminService authenticate nobody, exactly like no --tokens-file: the same
# warning, so the newcomer learns why `conveyor status` says UNAUTHENTICATED.
async def test_an_empty_tokens_file_gets_the_no_auth_warning(case: Case, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# principal  scope  sha256-hex-of-token  [expires]\n")
    args = args_of("relay", case.schema, "--tokens-file", str(tokens))
    proc = start_conveyor(args, env_of(case.env, case.schema))
    assert proc.stdout is not None
    shown = ""
    for line in proc.stdout:
        shown += line
        if "started:" in line:
            break
    shown += stop(proc)
    assert "AdminService can authenticate nobody" in shown, shown


# A TLS certificate and key given the wrong way round are a usage error naming both files, found
# before gRPC sees them: not "address already in use" (exit 8), no raw gRPC lines.
@pytest.mark.parametrize("kind", KINDS)
async def test_a_bad_tls_certificate_is_not_reported_as_a_taken_port(
    case: Case, tmp_path: Path, kind: str
) -> None:
    pki = make_pki(tmp_path)
    swapped = ["--tls-cert", str(pki / "server.key"), "--tls-key", str(pki / "server.crt")]
    args = args_of(kind, case.schema, *swapped, "--allow-unauthenticated")
    result = run_conveyor(args, env_of(case.env, case.schema), 60)
    assert result.returncode == EXIT_USAGE, result.stderr
    line = failed_in_one_line(result)
    assert "already in use" not in line, line
    assert f"--tls-cert {pki / 'server.key'} and --tls-key {pki / 'server.crt'}" in line, line
    assert "add_port" not in result.stderr and "GRPC_VERBOSITY" not in result.stderr


# A --tokens-file that does not exist is a usage error naming the file, at once, before any wait
# for PostgreSQL and Redis (like a missing --tls-cert file).
async def test_a_missing_tokens_file_fails_before_the_wait_with_exit_2(
    case: Case, tmp_path: Path
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": url}
    missing = tmp_path / "no-such-tokens"
    args = args_of("relay", case.schema, "--startup-timeout", "2m", "--tokens-file", str(missing))
    proc = start_conveyor(args, env)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        out = stop(proc, signal.SIGKILL)
    assert proc.returncode == EXIT_USAGE, out
    line = failed_in_one_line(subprocess.CompletedProcess([], proc.returncode, "", out))
    assert str(missing) in line, line


# A bad --startup-timeout (`5x`, or `inf`: there is no unlimited wait) names the option and what
# it takes.
@pytest.mark.parametrize("value", ["5x", "inf"])
async def test_a_bad_startup_timeout_names_the_option(case: Case, value: str) -> None:
    result = run_conveyor(
        args_of("relay", case.schema, "--startup-timeout", value), env_of(case.env, case.schema)
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    line = failed_in_one_line(result)
    assert "--startup-timeout" in line or "CONVEYOR_STARTUP_TIMEOUT" in line, line
    assert "zero or more" not in line, line


def test_a_tokens_file_that_is_a_pipe_is_refused_naming_the_option(case: Case) -> None:
    # `--tokens-file <(vault read ...)` hands the process /dev/fd/N, a pipe that can be read
    # once, while the process reads its tokens file at start and again on SIGHUP: refused at
    # once (exit 2) naming the option, rather than starting with no token accepted.
    read_end, write_end = os.pipe()
    os.write(write_end, b"ops read " + b"ab" * 32 + b"\n")
    os.close(write_end)
    args = args_of("relay", case.schema, "--tokens-file", f"/dev/fd/{read_end}")
    try:
        done = subprocess.run(
            [CONVEYOR, *args],
            env={**os.environ, **env_of(case.env, case.schema)},
            capture_output=True,
            text=True,
            timeout=60,
            pass_fds=(read_end,),
            check=False,
        )
    finally:
        os.close(read_end)
    assert done.returncode == 2, done.stderr
    assert "--tokens-file" in done.stderr and "not a regular file" in done.stderr, done.stderr
