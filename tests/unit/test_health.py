"""A topic worker's health and the snapshot the ops plane reads of it."""

from __future__ import annotations

import logging
import time

import pytest

from consumers import WorkerStatus
from consumers.health import Health
from conveyor.outages import Outage


def test_a_worker_starts_not_serving_until_its_first_round() -> None:
    status = Health("identity", "billing").status()
    assert (status.topic, status.serving, status.reason, status.stopped) == (
        "identity",
        False,
        "starting",
        False,
    )


def test_progress_makes_it_serving_and_moves_last_progress() -> None:
    health = Health("identity", "billing")
    before = health.last_progress
    time.sleep(0.001)
    health.progressed()
    status = health.status()
    assert (status.serving, status.reason) == (True, "")
    assert status.last_progress > before


def test_trouble_is_logged_once_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    health = Health("identity", "billing")
    health.progressed()
    with caplog.at_level(logging.WARNING, logger="consumers.health"):
        health.unhealthy("ConnectionError: gone")
        health.unhealthy("ConnectionError: gone")
        health.unhealthy("database unavailable: x")
    assert [r.getMessage().count("reason=") for r in caplog.records] == [1, 1]
    assert "topic=identity group=billing" in caplog.records[0].getMessage()
    assert health.status() == WorkerStatus(
        "identity", False, "database unavailable: x", health.last_progress, False
    )


def test_the_snapshot_does_not_change_with_the_worker() -> None:
    health = Health("identity", "billing")
    snapshot = health.status()
    health.progressed()
    assert not snapshot.serving


def test_a_worker_serving_again_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    health = Health("identity", "billing")
    health.progressed()
    with caplog.at_level(logging.INFO, logger="consumers.health"):
        health.unhealthy("ConnectionError: gone")
        health.progressed()
        health.progressed()
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert caplog.records[1].getMessage() == "consumer serving again: topic=identity group=billing"


def test_trouble_during_a_postgres_outage_is_left_to_the_outage_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    postgres = Outage("postgres", "postgresql://app:***@db/app", logging.getLogger("t"), "consumer")
    health = Health("identity", "billing", postgres)
    health.progressed()
    postgres.failed(ConnectionResetError("reset"))
    with caplog.at_level(logging.INFO, logger="consumers.health"):
        health.unhealthy("database unavailable: ConnectionResetError: reset")
        postgres.answered()
        health.progressed()
    assert [r for r in caplog.records if r.name == "consumers.health"] == []
    assert health.status().serving


def test_trouble_that_outlasts_a_postgres_outage_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Redis went away during a PostgreSQL outage and stays away after PostgreSQL is back: the
    # reason was only at DEBUG while the outage line spoke, so it is warned about now, once.
    postgres = Outage("postgres", "postgresql://app:***@db/app", logging.getLogger("t"), "consumer")
    health = Health("identity", "billing", postgres)
    health.progressed()
    postgres.failed(ConnectionResetError("reset"))
    with caplog.at_level(logging.WARNING, logger="consumers.health"):
        health.unhealthy("redis unreachable: ConnectionError")
        assert [r for r in caplog.records if r.name == "consumers.health"] == []
        postgres.answered()
        for _ in range(3):
            health.unhealthy("redis unreachable: ConnectionError")
    warned = [r.getMessage() for r in caplog.records if r.name == "consumers.health"]
    assert len(warned) == 1 and "redis unreachable" in warned[0], warned
