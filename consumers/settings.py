"""Settings of a consumer process."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Literal

from conveyor import database, wire
from conveyor.deadlines import DEPENDENCY_TIMEOUT
from conveyor.retry import RetryPolicy
from conveyor.urls import redact

Mode = Literal["exactly-once", "at-least-once"]

_START_NAMES = {"earliest": "0", "latest": "$"}
"""The named start points and the ids XGROUP CREATE takes for them."""
_ENTRY_ID = re.compile(r"\d{1,19}-\d{1,19}")
_MAX_SEQ = 2**64 - 1
"""The largest sequence number of a stream entry id."""

_OUTAGE_BACKOFF = 0.2
"""Seconds waited after the first failure of Redis or the database."""


def default_consumer_name() -> str:
    """`host-pid`, as consumer names must be unique within a group."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return f"{host or 'host'}-{os.getpid()}"[:100]


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """How one consumer process runs; validated on construction."""

    group: str
    """Consumer group (`[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}`); every group gets every event, the
    members of a group share them."""
    topics: tuple[str, ...]
    """Topics to consume; by default the topics the router's handlers declare."""
    database_url: str = database.DEFAULT_DATABASE_URL
    """PostgreSQL holding the ledger, the handlers' tables and the catalog."""
    redis_url: str = wire.DEFAULT_REDIS_URL
    """Redis holding the streams."""
    consumer: str = field(default_factory=default_consumer_name)
    """Member name, unique within the group; by default `host-pid`."""
    ledger_schema: str = database.DEFAULT_SCHEMA
    """Schema whose `event_ledger` guards exactly-once effects (handlers' tables live anywhere);
    must be at head."""
    mode: Mode = "exactly-once"
    """`exactly-once`, or `at-least-once` (no ledger)."""
    start: str = "earliest"
    """Where the group starts on a topic stream when this member creates it there: `earliest`
    (every entry the stream still holds), `latest` (only entries appended after the creation) or
    a stream entry id `<ms>-<seq>` (entries appended from that id on). A group that exists keeps
    its place; the group's retry stream always starts at its beginning."""
    key_prefix: str = wire.DEFAULT_PREFIX
    """First part of every Redis key, so tenants and tests can share one Redis."""
    batch_size: int = 1000
    """Entries read per XREADGROUP and applied per round (1-100000)."""
    partitions: int = 2
    """Database lanes (connections) per topic, a batch split over them by aggregate id (1-64)."""
    block: float = 1.0
    """How long an XREADGROUP waits for new entries."""
    gather_delay: float = 0.001
    """After a read that found entries but not a full batch, with no batch in flight, wait this
    long and read again before applying, so events arriving meanwhile share the batch's
    transaction: less CPU per event at everyday rates, for up to this much latency (0-1 s; 0
    applies at once). A short batch also waits for the batch in flight, whatever this is."""
    max_attempts: int = 5
    """Deliveries of an event before it becomes a dead letter (`max_attempts`), 1-1000."""
    retry_backoff: float = 1.0
    """Delay before the second attempt; doubles per attempt, with jitter."""
    retry_backoff_max: float = 300.0
    """Longest delay between attempts."""
    claim_idle: float = 30.0
    """Reclaim entries left unacknowledged this long on another member."""
    max_event_bytes: int = wire.MAX_EVENT_BYTES
    """Larger events are dead letters (`oversized`)."""
    recreate_lost_group: bool = False
    """At-least-once only: carry on from `0` when the group vanishes while running (exactly-once
    groups always do, their ledger absorbs the re-deliveries)."""
    ledger_retention: float = 30 * 86400.0
    """Ledger rows older than this are deleted (a warning at start if shorter than the redelivery
    window)."""
    dead_letter_retention: float = 30 * 86400.0
    """Resolved dead letters older than this leave the dead-letter stream and the catalog."""
    max_stream_length: int | None = None
    """Hard cap on a topic stream's length; entries trimmed beyond it are counted as
    `events_trimmed`."""
    housekeeping_interval: float = 60.0
    """How often trims, ledger clean-ups, idle-member removals and the dead-letter reconciler
    run."""
    idle_consumer_timeout: float = 3600.0
    """Members idle this long with nothing pending are removed from the group."""
    heartbeat_interval: float = 10.0
    """How often the member refreshes its entry in the catalog's consumer registry."""
    db_backoff_max: float = 10.0
    """Longest wait between attempts to reach PostgreSQL or Redis while one is away."""
    dependency_timeout: float = DEPENDENCY_TIMEOUT
    """How long one round trip of the consumer's own to PostgreSQL or Redis (a read, on top of
    its block; a ledger claim, a COMMIT, an XACK, a heartbeat) may go unanswered: then its
    connection is closed, the batch retried, and the consumer reports the dependency unreachable
    until it answers. Handlers' own statements are not bounded by it."""
    lease_ttl: float = 12.0
    """Ordered topics: how long a member's lease on a partition lasts unrenewed (renewed every
    third of it), so how long a crashed member's partitions wait before another member takes
    them over."""

    def __post_init__(self) -> None:
        wire.validate_name("group", self.group)
        wire.validate_name("consumer", self.consumer)
        if not self.topics:
            raise ValueError("topics must name at least one topic (or register handlers)")
        for topic in self.topics:
            wire.validate_topic(topic)
        database.validate_schema(self.ledger_schema)
        wire.validate_prefix(self.key_prefix)
        if not (self.start in _START_NAMES or _ENTRY_ID.fullmatch(self.start)):
            raise ValueError(
                f"start must be earliest, latest or a stream entry id <ms>-<seq>, got "
                f"{self.start[:40]!r}"
            )
        if self.mode not in ("exactly-once", "at-least-once"):
            raise ValueError(f"mode must be exactly-once or at-least-once, got {self.mode!r}")
        for name, low, high in (
            ("batch_size", 1, 100_000),
            ("partitions", 1, 64),
            ("max_attempts", 1, 1000),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be {low}-{high}, got {value!r}")
        for name in (
            "block",
            "retry_backoff",
            "claim_idle",
            "housekeeping_interval",
            "heartbeat_interval",
            "db_backoff_max",
            "idle_consumer_timeout",
            "dependency_timeout",
            "lease_ttl",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if not 0 <= self.gather_delay <= 1:
            raise ValueError(f"gather_delay must be 0-1 seconds, got {self.gather_delay!r}")
        if self.retry_backoff_max < self.retry_backoff:
            raise ValueError("retry_backoff_max must be >= retry_backoff")
        if self.max_stream_length is not None and self.max_stream_length < 1:
            raise ValueError(f"max_stream_length must be >= 1, got {self.max_stream_length!r}")
        if self.max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be >= 1, got {self.max_event_bytes!r}")

    @property
    def exactly_once(self) -> bool:
        return self.mode == "exactly-once"

    @property
    def retry_policy(self) -> RetryPolicy:
        """Backoff of a failed handler: `retry_backoff` doubling to `retry_backoff_max`, with
        equal jitter, so a retry never comes much earlier than planned."""
        return RetryPolicy.of_seconds(self.retry_backoff, self.retry_backoff_max, jitter="equal")

    @property
    def outage_policy(self) -> RetryPolicy:
        """Backoff while Redis or the database fails: 0.2 s doubling to `db_backoff_max`."""
        return RetryPolicy.of_seconds(
            min(_OUTAGE_BACKOFF, self.db_backoff_max), self.db_backoff_max
        )

    @property
    def start_id(self) -> str:
        """`start` as XGROUP CREATE takes it: `0`, `$`, or for an entry id the id just before
        it (XGROUP CREATE takes the last id delivered, and the entry `start` names, e.g. the
        first appended in a `--start` time's millisecond, is to be delivered)."""
        named = _START_NAMES.get(self.start)
        if named is not None:
            return named
        ms, seq = (int(part) for part in self.start.split("-"))
        if seq:
            return f"{ms}-{seq - 1}"
        return f"{ms - 1}-{_MAX_SEQ}" if ms else "0"

    @property
    def database_address(self) -> str:
        """`database_url` as log lines show it: any password replaced by ***."""
        return redact(self.database_url)

    @property
    def redelivery_window(self) -> float:
        """Longest time an event can take from first delivery to its last attempt."""
        policy = self.retry_policy
        waits = sum(policy.ceiling(n) for n in range(1, self.max_attempts))
        return waits + self.max_attempts * self.claim_idle
