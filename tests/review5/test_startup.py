"""Start-up of `conveyor relay` and `conveyor consume`: what a failed or interrupted start says,
its exit code, and that no secret reaches stderr."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from admin.cli.options import EXIT_ADDRESS_IN_USE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from tests.integration.conftest import Case
from tests.integration.test_startup_failures import args_of, env_of, failed_in_one_line
from tests.pki import make_pki
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


class OneConnectionProxy:
    """A loopback TCP proxy to `port` that serves its first connection, then stops listening: the
    start-up check gets through, everything after it finds the dependency gone."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        finally:
            self._listener.close()
        upstream = socket.create_connection(("127.0.0.1", self._target))
        self._open += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._open:
            sock.close()


# PostgreSQL answering the start-up check and gone a moment later (a failover, a restart) ends
# the start with "the ops plane cannot connect to PostgreSQL: ConnectionRefusedError: ..." --
# no --database-url, no address as the user wrote it, nothing to do; and no wait, though
# --startup-timeout promises a bounded wait for PostgreSQL at start. Expected: the same line as
# the check gives (the address and --database-url / CONVEYOR_DATABASE_URL).
@pytest.mark.parametrize("kind", KINDS)
async def test_postgres_lost_right_after_the_check_names_the_option(case: Case, kind: str) -> None:
    proxy = OneConnectionProxy(make_url(case.database_url).port or 5432)
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": url}
    try:
        result = run_conveyor(args_of(kind, case.schema, "--startup-timeout", "1s"), env, 60)
    finally:
        proxy.close()
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    line = failed_in_one_line(result)
    assert "--database-url" in line, line


# Redis answering the check's PING and gone when the consumer creates its groups ends the start
# with "PostgreSQL or Redis failed while the process started (ConnectionError: ...): start it
# again once both answer": it does not say which of the two, nor name --redis-url. Expected: the
# line names Redis and --redis-url / CONVEYOR_REDIS_URL, as every other Redis failure at start.
async def test_redis_lost_right_after_the_check_names_the_option(
    case: Case, catalog_cleanup: None
) -> None:
    proxy = OneConnectionProxy(make_url(case.redis_url).port or 6379)
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


# `conveyor token create --tokens-file F` says "processes read it at start, and again on SIGHUP".
# An operator who then sends SIGHUP to every conveyor process kills, silently, any still waiting
# for PostgreSQL at start (SIGHUP's default action: the reload handler is installed only once the
# gRPC server runs). Expected: the process keeps waiting (and reads the file when it starts).
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


# A tokens file with no token in it (the header `token create` writes, or an empty file made to
# fill in later) lets AdminService authenticate nobody, exactly like no --tokens-file -- but the
# start-up warning is given only when --tokens-file is absent. Expected: the same warning, so the
# newcomer learns why `conveyor status` says UNAUTHENTICATED.
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


# A TLS certificate and key given the wrong way round (or a key that is not the certificate's)
# makes gRPC's add_secure_port fail; the start reports it as "cannot listen on ... (address
# already in use): another relay or consumer may be running here; give this one --grpc-addr",
# exit 8, under gRPC's raw `add_port.cc` lines. The user then hunts for a process that does not
# exist. Expected: one line naming --tls-cert / --tls-key, and not exit 8 (address in use).
@pytest.mark.parametrize("kind", KINDS)
async def test_a_bad_tls_certificate_is_not_reported_as_a_taken_port(
    case: Case, tmp_path: Path, kind: str
) -> None:
    pki = make_pki(tmp_path)
    swapped = ["--tls-cert", str(pki / "server.key"), "--tls-key", str(pki / "server.crt")]
    args = args_of(kind, case.schema, *swapped, "--allow-unauthenticated")
    result = run_conveyor(args, env_of(case.env, case.schema), 60)
    assert result.returncode not in (EXIT_OK, EXIT_ADDRESS_IN_USE), result.stderr
    line = failed_in_one_line(result)
    assert "already in use" not in line, line
    assert "--tls-cert" in line or "--tls-key" in line, line


# A --tokens-file that does not exist is noticed only after the wait for PostgreSQL and Redis
# (up to --startup-timeout, 30 s by default), and then exits 1. A missing --tls-cert file, by
# contrast, exits 2 at once. Expected: like every other invalid flag value, exit 2 at once naming
# the file, before any wait -- the user fixes one thing at a time otherwise, waiting each time.
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


# `--startup-timeout 5x` (or CONVEYOR_STARTUP_TIMEOUT=5x in a unit file) ends with "invalid
# duration '5x': ..." -- which of the relay's five duration options? `inf` is refused as "must be
# zero or more". Expected: the line names --startup-timeout (BAD_INPUT.md: the response names the
# problem).
@pytest.mark.parametrize("value", ["5x", "inf"])
async def test_a_bad_startup_timeout_names_the_option(case: Case, value: str) -> None:
    result = run_conveyor(
        args_of("relay", case.schema, "--startup-timeout", value), env_of(case.env, case.schema)
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    line = failed_in_one_line(result)
    assert "--startup-timeout" in line or "CONVEYOR_STARTUP_TIMEOUT" in line, line
    assert "zero or more" not in line, line
