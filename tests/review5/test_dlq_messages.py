"""Answers of the `dlq` commands that must say why nothing happened."""

from __future__ import annotations

import asyncpg
import pytest

from tests.review5.rejected import TOPIC, pipeline

pytestmark = pytest.mark.slow


async def test_resolving_a_resolved_letter_again_says_it_was_resolved_already(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # The Quick start's `dlq resolve` line, run a second time (shell history, a second
    # operator): today it prints "resolved 0 of 1 dead letters of topic demo" and exits 0,
    # without why. A user expects to be told the letter was resolved already (and by whom or
    # when), as reprocess of a resolved letter says "already resolved".
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        _, entry = await p.reject("bob.example.com")
        resolve = ("dlq", "resolve", "--stream", TOPIC, "--id", entry, "--reason", "not an address")
        first = p.conveyor(*resolve)
        assert first.returncode == 0, first.stderr
        again = p.conveyor(*resolve)
        said = again.stdout + again.stderr
        assert "already" in said, said


async def test_a_refused_reprocess_does_not_invite_a_retry(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # Reprocessing a resolved letter is refused (FAILED_PRECONDITION, exit 6), and the refusal
    # is right. But the command first prints "idempotency key: K (repeat with
    # --idempotency-key K to retry safely)": an invitation to repeat a request that can only be
    # refused again. A user expects the hint only when a retry can help (no answer came back).
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        _, entry = await p.reject("bob.example.com")
        why = ("--reason", "not an address")
        resolved = p.conveyor("dlq", "resolve", "--stream", TOPIC, "--id", entry, *why)
        assert resolved.returncode == 0, resolved.stderr
        again = p.conveyor("dlq", "reprocess", "--stream", TOPIC, "--id", entry)
        assert again.returncode == 6, again.stderr
        assert "already resolved" in again.stderr
        assert "retry safely" not in again.stdout + again.stderr, again.stdout + again.stderr
