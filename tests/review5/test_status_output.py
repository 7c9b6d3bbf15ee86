"""`conveyor status` against a consumer, as the README's `--target 127.0.0.1:50052` lines do."""

from __future__ import annotations

import asyncpg
import pytest

from tests.review5.rejected import pipeline

pytestmark = pytest.mark.slow


async def test_status_of_a_consumer_shows_no_empty_outbox_table(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
) -> None:
    # A consumer drains no outbox, yet its status prints the heading "outbox backlog" and the
    # column names "schema  backlog  oldest age" over no rows, so a user reads "the backlog is
    # unknown" or "something is missing". A user expects the section left out, or one line
    # saying a relay reports the outbox backlog.
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        status = p.conveyor("status")
    assert status.returncode == 0, status.stderr
    lines = [line.strip() for line in status.stdout.splitlines()]
    if "outbox backlog" in lines:
        after = lines[lines.index("outbox backlog") + 1 :]
        rows = after[1:]  # below the column names
        assert rows and rows[0] and not rows[0].startswith("consumer groups"), status.stdout
