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
