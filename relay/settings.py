"""Settings of a relay process."""

from __future__ import annotations

from dataclasses import dataclass

from conveyor import database, wire
from conveyor.deadlines import DEPENDENCY_TIMEOUT
from conveyor.retry import RetryPolicy
from conveyor.urls import redact


def _positive(name: str, value: float, allowed: str = "a number > 0") -> None:
    if not value > 0:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """How one relay process runs; validated on construction."""

    database_url: str = database.DEFAULT_DATABASE_URL
    """PostgreSQL holding the outbox tables."""
    redis_url: str = wire.DEFAULT_REDIS_URL
    """Redis receiving the streams."""
    schemas: tuple[str, ...] = (database.DEFAULT_SCHEMA,)
    """Application schemas whose outbox this relay drains."""
    key_prefix: str = wire.DEFAULT_PREFIX
    """First part of every Redis key, so tenants and tests can share one Redis."""
    batch_size: int = 1000
    """Rows claimed, published and marked per transaction (1-100000)."""
    concurrency: int = 2
    """Batches in flight per schema (1-16); their XADDs still go out in claim order."""
    poll_interval: float = 1.0
    """Claim this often when no NOTIFY arrives (the fallback that also covers outages)."""
    gather_delay: float = 0.001
    """After a claim that found rows but not a full batch, wait this long before the next one, so
    the rows committing meanwhile go out together: fewer claims, transactions and XADD round trips
    at everyday rates, for up to this much latency (0-1 s; 0 claims again at once). A relay
    woken from waiting claims at once."""
    listen: bool = True
    """Wake on the outbox trigger's NOTIFY; off, the relay only polls."""
    retention: float = 86_400.0
    """Keep published rows this long for `conveyor relay replay`; 0 deletes each row as it is
    published."""
    cleanup_interval: float = 60.0
    """How often rows older than the retention are deleted."""
    cleanup_batch: int = 10_000
    """Rows deleted per cleanup statement."""
    backoff_initial: float = 0.1
    """First wait after a failed batch; doubles up to `backoff_max`, with jitter."""
    backoff_max: float = 10.0
    """Longest wait between attempts after failed batches."""
    monitor_interval: float = 1.0
    """How often Redis is checked for a reset; the backlog is measured every fifth round."""
    heartbeat_interval: float = 10.0
    """How often a registered relay refreshes its heartbeat in the catalog's registry."""
    wait_replicas: int = 0
    """After each batch's XADDs, wait (Redis WAIT, on the same connection; per master on a
    cluster) until this many replicas have them, and publish the rows only then; fewer within
    the wait timeout fails the batch, retried. 0: no wait (a master that dies may take
    acknowledged XADDs its replicas had not yet received with it)."""
    wait_timeout: float = 1.0
    """How long one batch's WAIT may take before the batch counts as failed (0.001-60 s)."""
    dependency_timeout: float = DEPENDENCY_TIMEOUT
    """How long one round trip of the relay's own to PostgreSQL or Redis (a claim, a batch's
    XADDs, a COMMIT, a heartbeat) may go unanswered: then its connection is closed, the batch
    rolled back and retried, and the dependency reported unreachable until it answers."""

    def __post_init__(self) -> None:
        if not self.schemas:
            raise ValueError("schemas must name at least one schema")
        for schema in self.schemas:
            database.validate_schema(schema)
        if len(set(self.schemas)) != len(self.schemas):
            raise ValueError(f"schemas must not repeat, got {list(self.schemas)}")
        wire.validate_prefix(self.key_prefix)
        if not 1 <= self.batch_size <= 100_000:
            raise ValueError(f"batch_size must be 1-100000, got {self.batch_size!r}")
        if not 1 <= self.concurrency <= 16:
            raise ValueError(f"concurrency must be 1-16, got {self.concurrency!r}")
        if not 0 <= self.gather_delay <= 1:
            raise ValueError(f"gather_delay must be 0-1 seconds, got {self.gather_delay!r}")
        if not 0 <= self.wait_replicas <= 100:
            raise ValueError(f"wait_replicas must be 0-100, got {self.wait_replicas!r}")
        if not 0.001 <= self.wait_timeout <= 60:
            raise ValueError(f"wait_timeout must be 0.001-60 seconds, got {self.wait_timeout!r}")
        if self.retention < 0:
            raise ValueError(f"retention must be >= 0 seconds, got {self.retention!r}")
        for name in (
            "poll_interval",
            "cleanup_interval",
            "backoff_initial",
            "monitor_interval",
            "heartbeat_interval",
            "dependency_timeout",
        ):
            _positive(name, getattr(self, name))
        _positive("cleanup_batch", self.cleanup_batch, "an integer > 0")
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff_initial "
                f"({self.backoff_initial})"
            )

    @property
    def redis_address(self) -> str:
        """`redis_url` as log lines show it: any password replaced by ***."""
        return redact(self.redis_url)

    @property
    def database_address(self) -> str:
        """`database_url` as log lines show it: any password replaced by ***."""
        return redact(self.database_url)

    @property
    def retry_policy(self) -> RetryPolicy:
        """Backoff of a failed batch: `backoff_initial` doubling to `backoff_max`, with full
        jitter, so relays that failed together do not retry together."""
        return RetryPolicy.of_seconds(self.backoff_initial, self.backoff_max, jitter="full")
