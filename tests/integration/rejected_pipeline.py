"""A relay and a consumer (`conveyor` processes) of a test's own schema and key prefix, whose
group `mailer` runs the bundled demo router: its `welcome` rejects an address without `@`, so
producing one sign-up gives one dead letter of reason `rejected`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest

from admin import migrations
from conveyor.identity.v1 import events_pb2
from relay import enqueue
from tests.integration.test_ops_plane import port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

GROUP = "mailer"
TOPIC = "demo"  # the demo router's topic


@dataclass
class Pipeline:
    """Where a test talks to the processes: environment, the consumer's target, PostgreSQL."""

    env: dict[str, str]
    target: str
    schema: str
    key_prefix: str
    pg: asyncpg.Connection

    async def reject(self, email: str) -> tuple[uuid.UUID, str]:
        """Sign up `email` (without `@`); wait for its dead letter; its event id and entry id."""
        async with self.pg.transaction():
            event_id = await enqueue(
                self.pg,
                events_pb2.UserRegistered(user_id=f"u-{uuid.uuid4().hex[:6]}", email=email),
                aggregate_type="user",
                aggregate_id=email,
                topic=TOPIC,
                schema=self.schema,
                headers={"demo-schema": self.schema},
            )

        async def dead() -> bool:
            return bool(await self.states(event_id))

        await wait_until(dead, what=f"the sign-up of {email!r} rejected")
        listed = self.conveyor("dlq", "list", "--stream", TOPIC, "--json")
        letters = json.loads(listed.stdout)["dead_letters"]
        entry = next(d["entry_id"] for d in letters if d["event_id"] == str(event_id))
        return event_id, entry

    async def states(self, event_id: uuid.UUID) -> list[str]:
        """States of the catalog's dead letters of `event_id`."""
        rows = await self.pg.fetch(
            "SELECT state FROM conveyor.dead_letters WHERE key_prefix = $1 AND event_id = $2",
            self.key_prefix,
            event_id,
        )
        return sorted(str(row["state"]) for row in rows)

    async def letters(self, event_id: uuid.UUID) -> list[tuple[str, str, str | None]]:
        """(state, entry id, retry_of) of the catalog's dead letters of `event_id`, oldest first."""
        rows = await self.pg.fetch(
            "SELECT state, dlq_entry_id, retry_of FROM conveyor.dead_letters "
            "WHERE key_prefix = $1 AND event_id = $2 ORDER BY id",
            self.key_prefix,
            event_id,
        )
        return [(str(r["state"]), str(r["dlq_entry_id"]), r["retry_of"]) for r in rows]

    def conveyor(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`conveyor ARGS --target` the consumer."""
        return run_conveyor([*args, "--target", self.target], self.env)


@asynccontextmanager
async def pipeline(
    database_url: str, redis_url: str, schema: str, key_prefix: str, pg: asyncpg.Connection
) -> AsyncIterator[Pipeline]:
    """Migrate `schema`, start the relay and the consumer, stop both after."""
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
    args = ["--group", GROUP, "--topic", TOPIC, "--router", "admin.cli.demo:router"]
    consumer = start_conveyor(["consume", *args, "--ledger-schema", schema], env)
    try:
        port = port_of(consumer, [])
        yield Pipeline(env, f"127.0.0.1:{port}", schema, key_prefix, pg)
    finally:
        stop(consumer)
        stop(relay)


@pytest.fixture(name="rejecting")
async def fixture_rejecting(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> AsyncIterator[Pipeline]:
    """`pipeline` as a fixture, on the test's own schema and key prefix; stopped after."""
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as running:
        yield running
