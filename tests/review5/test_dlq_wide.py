"""`conveyor dlq list --wide` at 80 columns with stdout a pipe: "Every field (..., error, ...);
one block per dead letter when they do not fit the terminal"."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from admin import migrations
from conveyor.identity.v1 import events_pb2
from relay import enqueue
from tests.integration.test_ops_plane import port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow

TOPIC = "demo"  # the bundled demo router's topic: its `welcome` rejects an address without `@`
ADDRESS = "bob.at.a.rather.long.company.domain.example.com"


async def test_wide_shows_the_whole_error_of_a_dead_letter(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # The default table drops or cuts the error to fit 80 columns; the table's heading and
    # --help point to --wide for every field. A user running --wide expects the error whole
    # (here 87 characters); today the one-block-per-letter view still ends it with `…`.
    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_KEY_PREFIX": key_prefix,
        "CONVEYOR_GRPC_ADDR": "127.0.0.1:0",
        "CONVEYOR_ALLOW_UNAUTHENTICATED": "true",
        "COLUMNS": "80",
    }
    relay = start_conveyor(["relay", "--schema", schema], env)
    args = ["--group", "mailer", "--topic", TOPIC, "--router", "admin.cli.demo:router"]
    consumer = start_conveyor(["consume", *args, "--ledger-schema", schema], env)
    try:
        port = port_of(consumer, [])
        async with pg.transaction():
            event_id = await enqueue(
                pg,
                events_pb2.UserRegistered(user_id="bob", email=ADDRESS),
                aggregate_type="user",
                aggregate_id="bob",
                topic=TOPIC,
                schema=schema,
                headers={"demo-schema": schema},
            )

        async def dead() -> bool:
            found = await pg.fetchval(
                "SELECT count(*) FROM conveyor.dead_letters"
                " WHERE key_prefix = $1 AND event_id = $2",
                key_prefix,
                event_id,
            )
            return bool(found)

        await wait_until(dead, what="bob's sign-up rejected")
        error = f"cannot mail {ADDRESS!r}: not an email address"
        listed = run_conveyor(
            ["dlq", "list", "--stream", TOPIC, "--wide", "--target", f"127.0.0.1:{port}"], env
        )
        assert listed.returncode == 0, listed.stderr
        flat = " ".join(listed.stdout.split())  # a wrapped error still counts as whole
        assert error in flat, listed.stdout
    finally:
        stop(consumer)
        stop(relay)
