"""What the `conveyor` CLI answers about a real dead letter, against a real relay and consumer
(the bundled demo router rejects an address without `@`), at 80 columns with stdout a pipe."""

from __future__ import annotations

import asyncpg
import pytest

from tests.integration.rejected_pipeline import TOPIC, pipeline

pytestmark = pytest.mark.slow

ADDRESS = "bob.at.a.rather.long.company.domain.example.com"


async def test_wide_shows_the_whole_error_of_a_dead_letter(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # The default table cuts the error to fit 80 columns and points to --wide for every field:
    # there the error is whole (here 87 characters), wrapped rather than ended with `…`.
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        await p.reject(ADDRESS)
        listed = p.conveyor("dlq", "list", "--stream", TOPIC, "--wide")
    assert listed.returncode == 0, listed.stderr
    error = f"cannot mail {ADDRESS!r}: not an email address"
    flat = " ".join(listed.stdout.split())  # a wrapped error still counts as whole
    assert error in flat, listed.stdout


async def test_resolving_a_resolved_letter_again_says_it_was_resolved_already(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # A `dlq resolve` line run a second time (shell history, a second operator) says the letter
    # was resolved already, by whom and why, not just "resolved 0 of 1".
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        _, entry = await p.reject("bob.example.com")
        resolve = ("dlq", "resolve", "--stream", TOPIC, "--id", entry, "--reason", "not an address")
        first = p.conveyor(*resolve)
        assert first.returncode == 0, first.stderr
        again = p.conveyor(*resolve)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == f"resolved 0 of 1 dead letters of topic {TOPIC}"
    (left,) = again.stdout.splitlines()[1:]
    assert left.startswith(f"  left {entry}: already resolved by anonymous at 20"), left
    assert left.endswith(": not an address"), left


async def test_a_refused_reprocess_does_not_invite_a_retry(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # Reprocessing a resolved letter is refused (FAILED_PRECONDITION, exit 6): no "repeat with
    # --idempotency-key to retry" for a request that can only be refused again.
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        _, entry = await p.reject("bob.example.com")
        why = ("--reason", "not an address")
        resolved = p.conveyor("dlq", "resolve", "--stream", TOPIC, "--id", entry, *why)
        assert resolved.returncode == 0, resolved.stderr
        again = p.conveyor("dlq", "reprocess", "--stream", TOPIC, "--id", entry)
    assert again.returncode == 6, again.stderr
    assert "already resolved" in again.stderr
    assert "--idempotency-key" not in again.stdout + again.stderr, again.stdout + again.stderr


async def test_status_of_a_consumer_shows_no_empty_outbox_table(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # A consumer drains no outbox: one line says who reports the backlog, not a heading and
    # column names over no rows.
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        status = p.conveyor("status")
    assert status.returncode == 0, status.stderr
    assert "outbox backlog: none here (a relay reports the outboxes it drains)" in status.stdout
    assert "oldest age" not in status.stdout
    assert "consumer groups" in status.stdout  # a table, or none in a snapshot taken at start
