"""Connection URLs in messages: every password masked, wherever it sits, and a URL that does not
parse said so without its secret."""

from __future__ import annotations

import pytest

from consumers import ConsumerSettings
from conveyor.urls import POSTGRES_SCHEMES, REDIS_SCHEMES, redact, url_problem
from relay import RelaySettings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app:s3@cr@et@db/app", "postgresql://app:***@db/app"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://app@db/app?sslmode=require&password=s3cret", None),
        ("redis://cache:6379/0?Password=s3cret&db=1", "redis://cache:6379/0?Password=***&db=1"),
        ("postgresql//app:s3cret@db/app", "postgresql//app:***@db/app"),
        ("postgresql://app@db:5432/app", "postgresql://app@db:5432/app"),
        ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
    ],
)
def test_every_password_is_masked(url: str, shown: str | None) -> None:
    assert "s3" not in redact(url)
    if shown is not None:
        assert redact(url) == shown


@pytest.mark.parametrize(
    ("url", "schemes", "problem"),
    [
        ("postgresql//app:s3cret@db/app", POSTGRES_SCHEMES, "is not a URL"),
        ("postgresql://app:s3cret@db:x/app", POSTGRES_SCHEMES, "does not parse: Port"),
        ("mysql://app:s3cret@db/app", POSTGRES_SCHEMES, "has scheme 'mysql'"),
        ("postgres://app:s3cret@db/app?password=s3cret", REDIS_SCHEMES, "use redis://"),
    ],
)
def test_a_url_that_cannot_be_used_says_why_without_its_password(
    url: str, schemes: tuple[str, ...], problem: str
) -> None:
    said = url_problem(url, schemes)
    assert said is not None and problem in said and "s3" not in said


@pytest.mark.parametrize(
    ("url", "schemes"),
    [
        ("postgresql://app@db:5432/app", POSTGRES_SCHEMES),
        ("postgresql:///app?host=/run/postgresql", POSTGRES_SCHEMES),
        ("rediss://:pw@cache:6380/0", REDIS_SCHEMES),
        ("unix:///run/redis.sock", REDIS_SCHEMES),
    ],
)
def test_usable_urls_pass(url: str, schemes: tuple[str, ...]) -> None:
    assert url_problem(url, schemes) is None


def test_relay_and_consumer_log_lines_mask_every_password() -> None:
    database = "postgresql://app:s3@cr@et@db/app?sslmode=require"
    redis = "redis://cache:6379/0?password=s3cret"
    relay = RelaySettings(database_url=database, redis_url=redis)
    consumer = ConsumerSettings(group="g", topics=("t",), database_url=database)
    for shown in (relay.database_address, relay.redis_address, consumer.database_address):
        assert "s3" not in shown and "et@" not in shown and "***" in shown
