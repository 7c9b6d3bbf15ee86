"""`conveyor dlq list --wide` at 80 columns with stdout a pipe: "Every field (..., error, ...);
one block per dead letter when they do not fit the terminal"."""

from __future__ import annotations

import asyncpg
import pytest

from tests.review5.rejected import TOPIC, pipeline

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
    # The default table drops or cuts the error to fit 80 columns; the table's heading and
    # --help point to --wide for every field. A user running --wide expects the error whole
    # (here 87 characters); today the one-block-per-letter view still ends it with `…`.
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        await p.reject(ADDRESS)
        listed = p.conveyor("dlq", "list", "--stream", TOPIC, "--wide")
    assert listed.returncode == 0, listed.stderr
    error = f"cannot mail {ADDRESS!r}: not an email address"
    flat = " ".join(listed.stdout.split())  # a wrapped error still counts as whole
    assert error in flat, listed.stdout
