"""The one backoff policy every retry loop uses, and sleeping unless stopped."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from consumers import ConsumerSettings
from conveyor.retry import RetryPolicy, pause
from relay import RelaySettings


def policy(initial: float, maximum: float, **options: Any) -> RetryPolicy:
    return RetryPolicy(timedelta(seconds=initial), timedelta(seconds=maximum), **options)


def test_the_ceiling_grows_by_the_multiplier_up_to_the_maximum() -> None:
    p = policy(0.5, 3.0, multiplier=3.0)
    assert [p.ceiling(n) for n in range(1, 5)] == [0.5, 1.5, 3.0, 3.0]
    assert p.ceiling(0) == 0.5, "attempt 0 waits as long as the first"


def test_a_huge_attempt_number_waits_the_maximum() -> None:
    assert policy(0.1, 10.0).ceiling(5000) == 10.0
    assert policy(0.1, 10.0, jitter="full").delay(5000) <= 10.0


@pytest.mark.parametrize(
    ("jitter", "low", "high"), [("none", 1.0, 1.0), ("full", 0.0, 1.0), ("equal", 0.5, 1.0)]
)
def test_jitter_draws_below_the_ceiling(jitter: Any, low: float, high: float) -> None:
    p = policy(1.0, 1.0, jitter=jitter)
    delays = [p.delay(3) for _ in range(500)]
    assert all(low <= d <= high for d in delays)
    if jitter != "none":
        assert max(delays) - min(delays) > (high - low) / 2, "the draws spread"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial": timedelta(0)}, "initial must be > 0"),
        ({"maximum": timedelta(seconds=0.5)}, r"maximum .* must be >= initial"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
        ({"jitter": "some"}, "jitter must be one of none, full, equal"),
    ],
)
def test_bad_policies_are_refused(options: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"initial": timedelta(seconds=1), "maximum": timedelta(seconds=2)}
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**(values | options))


def test_handler_retries_keep_their_defaults() -> None:
    """1 s doubling to 5 min, equal jitter: a retry never comes much earlier than planned."""
    p = ConsumerSettings(group="g", topics=("t",)).retry_policy
    assert p == policy(1.0, 300.0, jitter="equal")
    assert [p.ceiling(n) for n in (1, 2, 3, 9, 10)] == [1.0, 2.0, 4.0, 256.0, 300.0]


def test_outages_back_off_from_a_fifth_of_a_second_to_the_database_cap() -> None:
    """The wait after the n-th failure in a row is min(db_backoff_max, 0.1 * 2**n), unjittered."""
    p = ConsumerSettings(group="g", topics=("t",)).outage_policy
    assert [p.delay(n) for n in range(1, 9)] == [min(10.0, 0.1 * 2**n) for n in range(1, 9)]
    tiny = ConsumerSettings(group="g", topics=("t",), db_backoff_max=0.05).outage_policy
    assert [tiny.delay(n) for n in (1, 2)] == [0.05, 0.05]


def test_relay_batches_retry_with_full_jitter_from_a_tenth_of_a_second() -> None:
    p = RelaySettings().retry_policy
    assert p == policy(0.1, 10.0, jitter="full")


async def test_pause_sleeps_the_time_when_nothing_stops_it() -> None:
    started = time.monotonic()
    assert await pause(asyncio.Event(), 0.02) is False
    assert time.monotonic() - started >= 0.015


async def test_pause_ends_when_stopping_is_set() -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, stopping.set)
    async with asyncio.timeout(2):
        assert await pause(stopping, 60) is True
    assert await pause(stopping, 60) is True, "already set: no sleep at all"
