"""`conveyor demo`'s closing commands, pasted into a shell as one block, the way its summary
presents them (`consume ... &` first, then the `dlq` commands that talk to that consumer)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.processes import CONVEYOR, run_conveyor
from tests.servers import free_port

pytestmark = pytest.mark.slow


def test_the_printed_commands_work_when_pasted_as_one_block(
    database_url: str, redis_url: str, schema: str, key_prefix: str, catalog_cleanup: None
) -> None:
    # The summary says "To look at its dead letters, run a consumer of its group" and prints
    # the consumer (with `&`) followed at once by `dlq report` and `dlq inspect` against it. A
    # user copies that block into a terminal and expects every command to work; today the `dlq`
    # lines run while the consumer is still starting and fail UNAVAILABLE (connection refused),
    # and nothing printed says to wait for it.
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_DEMO_KEY_PREFIX": key_prefix,
        "COLUMNS": "80",
    }
    demo = run_conveyor(["demo", "--events", "40", "--schema", schema], env, timeout=180)
    assert demo.returncode == 0, demo.stderr
    port = free_port()  # the printed 50062 may be taken on a shared machine
    printed = [
        line.strip().replace("127.0.0.1:50062", f"127.0.0.1:{port}")
        for line in demo.stdout.splitlines()
        if line.startswith("  conveyor ")
    ]
    assert printed[0].startswith("conveyor consume ") and printed[0].endswith("&"), printed
    script = "".join(f'{line}\necho "__rc $?"\n' for line in printed) + "wait\n"
    shell = subprocess.Popen(
        ["bash", "--noprofile", "--norc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # `conveyor` on PATH, as in the activated virtualenv the README has the user make
        env={**os.environ, **env, "PATH": f"{os.path.dirname(CONVEYOR)}:{os.environ['PATH']}"},
        start_new_session=True,  # the pasted consumer ends with the shell
    )
    assert shell.stdin is not None and shell.stdout is not None
    shell.stdin.write(script)
    shell.stdin.close()
    out: list[str] = []
    codes: list[int] = []
    try:
        for line in shell.stdout:
            out.append(line)
            if line.startswith("__rc "):
                codes.append(int(line.split()[1]))
                if len(codes) == len(printed):
                    break
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        try:
            shell.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    failed = [(cmd, code) for cmd, code in zip(printed, codes, strict=True) if code != 0]
    assert not failed, "".join(out)
