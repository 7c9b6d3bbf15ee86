"""An operator's flow against a `conveyor consume` process on a Redis Cluster: it finds the
cluster from a plain redis:// URL of one node, its AdminService status shows each master (its
cluster_state and the topics it serves), and `conveyor dlq list/inspect/reprocess` work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor import redis_client, wire
from tests.cluster import RedisCluster
from tests.cluster_tests.support import ClusterCase
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.integration.test_ops_plane import READ_TOKEN, WRITE_TOKEN, port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow


async def _status_with_groups(client: dict[str, str]) -> dict[str, Any]:
    """`conveyor status --json` once it shows a group: the status is refreshed every second,
    and the group shows from the refresh after the consumer registered."""
    shown: dict[str, Any] = {}

    async def read() -> bool:
        status = run_conveyor(["status", "--json"], client)
        assert status.returncode == 0, status.stderr
        shown.update(json.loads(status.stdout))
        return bool(shown.get("groups"))

    await wait_until(read, timeout=60, interval=0.5, what="the group in status")
    return shown


async def test_status_and_dead_letters_over_cluster(
    database_url: str,
    migrated_schema: str,
    key_prefix: str,
    pg: asyncpg.Connection,
    redis_cluster: RedisCluster,
    tmp_path: Path,
) -> None:
    case = ClusterCase(database_url, redis_cluster.url, migrated_schema, key_prefix)
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"reader read {hashlib.sha256(READ_TOKEN.encode()).hexdigest()}\n"
        f"writer write {hashlib.sha256(WRITE_TOKEN.encode()).hexdigest()}\n"
    )
    refuse = tmp_path / "refuse"
    refuse.touch()
    await create_effects(pg, case.schema)
    env = case.env | {"TEST_EFFECTS_SCHEMA": case.schema, "TEST_REJECT_FILE": str(refuse)}
    args = ["consume", "--group", "g", "--router", "tests.integration.effects_router:router"]
    args += ["--ledger-schema", case.schema, "--grpc-addr", "127.0.0.1:0"]
    args += ["--tokens-file", str(tokens)]
    proc = start_conveyor(args, env)
    port = port_of(proc, [])
    client_r = redis_client.connect(redis_cluster.cluster_url)
    try:
        ids = await publish(client_r, case.prefix, 10, aggregates=10)

        async def nine() -> bool:
            return len(await effect_counts(pg, case.schema, "g")) == 9

        await wait_until(nine, timeout=120, what="nine applied, agg0 rejected")
        client = {"CONVEYOR_TARGET": f"127.0.0.1:{port}", "CONVEYOR_ADMIN_TOKEN": WRITE_TOKEN}

        holder = redis_cluster.master_of(wire.Keys("identity", case.prefix).events)
        shown = await _status_with_groups(client)
        redis = shown["redis"]
        assert redis["up"] and redis["cluster"], redis
        nodes = {n["address"]: n for n in redis["nodes"]}
        assert len(nodes) == 3, nodes
        assert {n["cluster_state"] for n in nodes.values()} == {"ok"}
        assert nodes[f"127.0.0.1:{holder.port}"]["topics"] == ["identity"]
        assert sum(len(n["topics"]) for n in nodes.values()) == 1
        assert all(n.get("connected_replicas") == 1 for n in nodes.values())
        table = run_conveyor(["status"], client | {"COLUMNS": "200"})
        assert "redis cluster masters" in table.stdout and f":{holder.port}" in table.stdout

        listed = run_conveyor(["dlq", "list", "--stream", "identity.dlq", "--json"], client)
        assert listed.returncode == 0, listed.stderr
        (dead,) = [d for d in json.loads(listed.stdout)["dead_letters"] if d["event_id"] == ids[0]]
        inspected = run_conveyor(
            ["dlq", "inspect", "--stream", "identity.dlq", "--id", dead["entry_id"], "--json"],
            client,
        )
        assert inspected.returncode == 0, inspected.stderr
        assert json.loads(json.loads(inspected.stdout)["payload_json"])["user_id"] == "u0"

        refuse.unlink()  # the cause is fixed
        again = ["dlq", "reprocess", "--stream", "identity.dlq", "--id", dead["entry_id"]]
        done = run_conveyor([*again, "--json"], client)
        assert done.returncode == 0, done.stderr
        assert int(json.loads(done.stdout)["requeued"]) == 1

        async def ten() -> bool:
            return len(await effect_counts(pg, case.schema, "g")) == 10

        await wait_until(ten, timeout=120, what="the dead letter applied")
    finally:
        out = stop(proc)
        await client_r.aclose()
    assert set((await effect_counts(pg, case.schema, "g")).values()) == {1}, out
