"""Running `conveyor relay` / `conveyor consume` for start-up tests, reading their one error line,
and the servers a start-up meets: a read-only Redis, a dependency gone right after the check."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.servers import RedisServer, free_port

KINDS = ("relay", "consume")


def args_of(kind: str, schema: str, *extra: str) -> list[str]:
    """`conveyor relay` or `conveyor consume` for `schema`, on any free gRPC port."""
    if kind == "relay":
        base = ["relay", "--schema", schema]
    else:
        base = ["consume", "--group", "g", "--router", "tests.integration.effects_router:router"]
        base += ["--ledger-schema", schema]
    return [*base, "--grpc-addr", "127.0.0.1:0", *extra]


def env_of(case_env: dict[str, str], schema: str) -> dict[str, str]:
    return case_env | {"TEST_EFFECTS_SCHEMA": schema}


def failed_in_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `conveyor: error:` line of a failed start, after checking there is no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("conveyor: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def output_until(proc: subprocess.Popen[str], text: str) -> str:
    """What `proc` printed up to and including the first line containing `text`."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return "".join(lines)
    raise AssertionError(f"the process ended before printing {text!r}:\n" + "".join(lines))


@pytest.fixture(name="read_only_redis")
def fixture_read_only_redis() -> Iterator[RedisServer]:
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
