"""What the `conveyor` CLI answers about a real dead letter, against a real relay and consumer
(the bundled demo router rejects an address without `@`), at 80 columns with stdout a pipe."""

from __future__ import annotations

import pytest

from tests.integration.rejected_pipeline import (  # noqa: F401 - a pytest fixture
    TOPIC,
    Pipeline,
    fixture_rejecting,
)

pytestmark = pytest.mark.slow

ADDRESS = "bob.at.a.rather.long.company.domain.example.com"


async def test_wide_shows_the_whole_error_of_a_dead_letter(rejecting: Pipeline) -> None:
    # The default table cuts the error to fit 80 columns and points to --wide for every field:
    # there the error is whole (here 87 characters), wrapped rather than ended with `…`.
    await rejecting.reject(ADDRESS)
    listed = rejecting.conveyor("dlq", "list", "--stream", TOPIC, "--wide")
    assert listed.returncode == 0, listed.stderr
    error = f"cannot mail {ADDRESS!r}: not an email address"
    flat = " ".join(listed.stdout.split())  # a wrapped error still counts as whole
    assert error in flat, listed.stdout


async def test_resolving_a_resolved_letter_again_says_it_was_resolved_already(
    rejecting: Pipeline,
) -> None:
    # A `dlq resolve` line run a second time (shell history, a second operator) says the letter
    # was resolved already, by whom and why, not just "resolved 0 of 1".
    _, entry = await rejecting.reject("bob.example.com")
    resolve = ("dlq", "resolve", "--stream", TOPIC, "--id", entry, "--reason", "not an address")
    first = rejecting.conveyor(*resolve)
    assert first.returncode == 0, first.stderr
    again = rejecting.conveyor(*resolve)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == f"resolved 0 of 1 dead letters of topic {TOPIC}"
    (left,) = again.stdout.splitlines()[1:]
    assert left.startswith(f"  left {entry}: already resolved by anonymous at 20"), left
    assert left.endswith(": not an address"), left


async def test_a_refused_reprocess_does_not_invite_a_retry(rejecting: Pipeline) -> None:
    # Reprocessing a resolved letter is refused (FAILED_PRECONDITION, exit 6): no "repeat with
    # --idempotency-key to retry" for a request that can only be refused again.
    _, entry = await rejecting.reject("bob.example.com")
    why = ("--reason", "not an address")
    resolved = rejecting.conveyor("dlq", "resolve", "--stream", TOPIC, "--id", entry, *why)
    assert resolved.returncode == 0, resolved.stderr
    again = rejecting.conveyor("dlq", "reprocess", "--stream", TOPIC, "--id", entry)
    assert again.returncode == 6, again.stderr
    assert "already resolved" in again.stderr
    assert "--idempotency-key" not in again.stdout + again.stderr, again.stdout + again.stderr


async def test_status_of_a_consumer_shows_no_empty_outbox_table(rejecting: Pipeline) -> None:
    # A consumer drains no outbox: one line says who reports the backlog, not a heading and
    # column names over no rows.
    status = rejecting.conveyor("status")
    assert status.returncode == 0, status.stderr
    assert "outbox backlog: none here (a relay reports the outboxes it drains)" in status.stdout
    assert "oldest age" not in status.stdout
    assert "consumer groups" in status.stdout  # a table, or none in a snapshot taken at start
