"""The pipeline's event loop, watched from the ops thread: a loop that stops running (a handler
doing blocking work) turns every component NOT_SERVING."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from admin.ops.status import ComponentStatus, GroupStatus, OutboxStatus, Probe, RedisStatus

LOOP_BLOCKED_AFTER = 5.0
"""Seconds the pipeline's event loop may go without running before every component is reported
NOT_SERVING ("event loop blocked"): nothing in it may block that long."""


class LoopWatch:
    """Wraps a probe: every component is NOT_SERVING while the pipeline's event loop is blocked
    (for more than LOOP_BLOCKED_AFTER seconds, or the stall timeout when that is shorter)."""

    def __init__(self, probe: Probe, beat: Callable[[], float], stall_timeout: float) -> None:
        self._probe = probe
        self._beat = beat
        self._limit = min(LOOP_BLOCKED_AFTER, stall_timeout)

    def components(
        self, redis: RedisStatus, groups: Sequence[GroupStatus], now: float
    ) -> list[ComponentStatus]:
        components = self._probe.components(redis, groups, now)
        blocked = now - self._beat()
        if blocked <= self._limit:
            return components
        reason = f"event loop blocked for {blocked:.0f}s (limit {self._limit:.0f}s)"
        return [replace(c, state="NOT_SERVING", reasons=(reason, *c.reasons)) for c in components]

    def outboxes(self) -> list[OutboxStatus]:
        return self._probe.outboxes()
