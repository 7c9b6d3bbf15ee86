"""What a relay tells the ops plane about itself: plain snapshots, one per forwarder."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backlog:
    """Unpublished rows of one outbox."""

    rows: int
    oldest_age: float
    """Seconds since the oldest unpublished row was written."""


@dataclass(frozen=True, slots=True)
class ForwarderStatus:
    """One schema's forwarder at one moment."""

    schema: str
    error: str | None
    """Why the last batch failed (it is being retried); None once a batch committed."""
    last_progress: float
    """Monotonic time a batch last committed, or the forwarder started."""
    backlog: Backlog | None
    """The outbox's backlog as last measured; None before the first measurement."""


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """A relay process at one moment: what holds for all its forwarders, and each of them."""

    stopping: bool
    """A graceful stop has begun."""
    postgres_up: bool | None
    """PostgreSQL answered the last backlog measurement; None before the first one."""
    redis_reset: str | None
    """The last Redis reset that lost streams, as a message; None when there was none."""
    forwarders: tuple[ForwarderStatus, ...]
