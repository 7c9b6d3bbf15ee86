"""What the `conveyor` CLI says when a call does not do what the user asked, against a real
`conveyor consume`: an unknown health service names the ones served; a repeated reprocess says
why it skipped each dead letter; an unknown entry id names the deployment looked in; a token sent
to a process started without tokens says so."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.integration.test_ops_plane import WRITE_TOKEN, port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(name="consumer")
def fixture_consumer(case: Case, tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A running `conveyor consume` of group g whose handler rejects aggregate agg0 while the
    file it yields exists; the CLI's environment to reach it with a write token."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"writer write {hashlib.sha256(WRITE_TOKEN.encode()).hexdigest()}\n")
    refuse = tmp_path / "refuse"
    refuse.touch()
    env = case.env | {"TEST_EFFECTS_SCHEMA": case.schema, "TEST_REJECT_FILE": str(refuse)}
    args = ["consume", "--group", "g", "--router", "tests.integration.effects_router:router"]
    args += ["--ledger-schema", case.schema, "--grpc-addr", "127.0.0.1:0"]
    proc = start_conveyor([*args, "--tokens-file", str(tokens)], env)
    try:
        port = port_of(proc, [])
        yield {"CONVEYOR_TARGET": f"127.0.0.1:{port}", "CONVEYOR_ADMIN_TOKEN": WRITE_TOKEN}, refuse
    finally:
        stop(proc)


async def test_health_of_an_unknown_service_names_the_served_ones_and_exits_3(
    case: Case, consumer: tuple[dict[str, str], Path]
) -> None:
    client, _ = consumer

    result = run_conveyor(["health", "nope"], client)

    assert result.returncode == 3, result.stderr
    line = result.stderr.strip()
    assert line.startswith("conveyor: error: NOT_FOUND: unknown health service 'nope'"), line
    assert "(no message)" not in line
    assert "'' (overall readiness)" in line and "conveyor.liveness" in line
    assert run_conveyor(["health", "conveyor.liveness"], client).returncode == 0


async def test_repeated_reprocess_says_why_it_skipped_the_dead_letter(
    case: Case, consumer: tuple[dict[str, str], Path]
) -> None:
    client, refuse = consumer
    await create_effects(case.pg, case.schema)
    await publish(case.redis, case.prefix, 3, aggregates=3)

    async def two() -> bool:
        return len(await effect_counts(case.pg, case.schema, "g")) == 2

    await wait_until(two, what="two applied, agg0 rejected")
    listed = run_conveyor(["dlq", "list", "--stream", "identity", "--json"], client)
    (dead,) = json.loads(listed.stdout)["dead_letters"]
    entry = dead["entry_id"]
    refuse.unlink()
    reprocess = ["dlq", "reprocess", "--stream", "identity", "--id", entry]

    first = run_conveyor([*reprocess, "--idempotency-key", f"first-{case.prefix}"], client)
    again = run_conveyor(reprocess, client)  # a new key: a new request, not a replay

    assert first.returncode == 0, first.stderr
    assert "requeued 1, duplicates 0, skipped 0" in first.stdout
    assert again.returncode == 0, again.stderr
    assert "skipped 1" in again.stdout
    (why,) = [line for line in again.stdout.splitlines() if line.strip().startswith("skipped ")]
    # Requeued and not applied yet, or applied already: either way who did it and with which key.
    assert why.strip().startswith(f"skipped {entry}: already re"), why
    assert "requeued by writer at 20" in why and f"(idempotency key first-{case.prefix})" in why
    replay = run_conveyor([*reprocess, "--idempotency-key", f"first-{case.prefix}"], client)
    assert "this one requeued nothing" in replay.stdout
    as_json = json.loads(run_conveyor([*reprocess, "--json"], client).stdout)
    (skip,) = as_json["skips"]
    assert skip["entry_id"] == entry
    assert skip["reason"] in ("SKIP_REASON_REPROCESSING", "SKIP_REASON_REPROCESSED")


async def test_reprocess_of_an_unknown_entry_names_the_deployment(
    case: Case, consumer: tuple[dict[str, str], Path]
) -> None:
    client, _ = consumer

    result = run_conveyor(
        ["dlq", "reprocess", "--stream", "identity", "--id", "1700000000000-0"], client
    )

    assert result.returncode == 3, result.stderr
    assert "no dead letters 1700000000000-0 on topic identity" in result.stderr
    assert f"(key prefix {case.prefix})" in result.stderr


def test_a_token_sent_to_a_process_without_tokens_file_says_the_process_has_none(
    database_url: str, redis_url: str, migrated_schema: str, key_prefix: str
) -> None:
    # Not "unknown bearer token", as for a mistyped token: the token and the tokens file are
    # fine, the process was started without --tokens-file.
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
    finally:
        stop(relay)
    assert status.returncode == 5, status.stderr
    assert "accepts no bearer tokens" in status.stderr, status.stderr
    assert "--tokens-file" in status.stderr and "unknown bearer token" not in status.stderr
