"""The start-up wait for PostgreSQL and Redis, and the lines a failed start ends with."""

from __future__ import annotations

import logging

import pytest

from admin.errors import DependencyUnavailable, SchemaNotReady
from admin.ops import startup


class Flaky:
    """An attempt that finds the dependency away `failures` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 6390)")
            try:
                raise ConnectionError("Error 111 connecting to 127.0.0.1:6390") from refused
            except ConnectionError as exc:
                raise startup._Unanswered(exc) from exc


async def test_a_dependency_that_answers_during_the_wait_ends_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempt = Flaky(failures=2)
    with caplog.at_level(logging.WARNING, logger="admin.ops.startup"):
        await startup._wait("Redis", "redis://127.0.0.1:6390/0", attempt, within=30)
    assert attempt.calls == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, "one warning per failed attempt"
    assert warnings[0].startswith(
        "Redis at redis://127.0.0.1:6390/0 did not answer (ConnectionRefusedError: "
    )


async def test_a_dependency_that_stays_away_ends_the_wait_naming_the_last_error() -> None:
    with pytest.raises(DependencyUnavailable) as caught:
        await startup._wait("Redis", "redis://127.0.0.1:6390/0", Flaky(1000), within=0.3)
    assert caught.value.message.startswith(
        "Redis at redis://127.0.0.1:6390/0 did not answer within 0.3 s (ConnectionRefusedError: "
    )


async def test_no_wait_means_one_attempt() -> None:
    attempt = Flaky(1000)
    with pytest.raises(DependencyUnavailable, match=r"did not answer \("):
        await startup._wait("PostgreSQL", "postgresql://db/app", attempt, within=0)
    assert attempt.calls == 1


def test_a_schema_never_migrated_is_said_in_words() -> None:
    error = SchemaNotReady(
        schema="nosuch",
        current=None,
        head="app_0004",
        command="conveyor migrate up --schema nosuch",
    )
    assert error.message == (
        "schema 'nosuch' has no Conveyor tables: run `conveyor migrate up --schema nosuch`"
    )
