"""What a consumer tells the ops plane about itself: plain snapshots, one per topic worker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One topic worker at one moment."""

    topic: str
    serving: bool
    """False while Redis or the database fails, the group is lost, or before the first round."""
    reason: str
    """Why it is not serving; empty when it is."""
    last_progress: float
    """Monotonic time a batch last finished (or the worker went idle, or started)."""
    stopped: bool
    """It stopped for good (an at-least-once group that was lost) and waits to be shut down."""


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """A consumer process at one moment: its group and a worker per topic."""

    group: str
    stopping: bool
    """A graceful stop has begun."""
    workers: tuple[WorkerStatus, ...]
    postgres_up: bool = True
    """False while the consumer reports PostgreSQL unreachable (its heartbeat, a lane or
    housekeeping could not reach it, or sent no reply in time), until it answers again."""
