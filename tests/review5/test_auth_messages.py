"""What `conveyor status` tells a user whose token meets a process that accepts no tokens at all:
the Quick start's `conveyor relay` line without `--tokens-file` (a line forgotten, or a relay
started from docs/your-events.md, which shows `conveyor relay --schema signup --descriptor-set
signup.binpb` alone)."""

from __future__ import annotations

import secrets

import pytest

from tests.integration.test_ops_plane import port_of
from tests.processes import run_conveyor, start_conveyor, stop

pytestmark = pytest.mark.slow


def test_a_token_sent_to_a_process_without_tokens_file_says_the_process_has_none(
    database_url: str, redis_url: str, migrated_schema: str, key_prefix: str
) -> None:
    # The process logged a warning at start, but the user reads the CLI's answer, in another
    # terminal. Today it is "UNAUTHENTICATED: unknown bearer token", the same as for a mistyped
    # token, so the user checks the token and tokens.txt, both fine. A user expects the answer
    # to say this process accepts no bearer tokens (started without --tokens-file).
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_KEY_PREFIX": key_prefix,
        "CONVEYOR_GRPC_ADDR": "127.0.0.1:0",
    }
    relay = start_conveyor(["relay", "--schema", migrated_schema], env)
    try:
        port = port_of(relay, [])
        token = {"CONVEYOR_ADMIN_TOKEN": secrets.token_urlsafe(32)}
        status = run_conveyor(["status", "--target", f"127.0.0.1:{port}"], {**env, **token})
        assert status.returncode == 5, status.stderr
        assert "--tokens-file" in status.stderr, status.stderr
    finally:
        stop(relay)
