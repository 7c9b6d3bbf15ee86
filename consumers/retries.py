"""Events waiting out their backoff: kept pending in Redis, scheduled in memory."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before attempt `attempt + 1`: doubling from `initial`, capped, with equal jitter."""
    ceiling = min(maximum, initial * 2.0 ** max(attempt - 1, 0))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(order=True, slots=True)
class Waiting:
    """A failed event still pending on this consumer, to be claimed again at `due`."""

    due: float
    stream: str = field(compare=False)
    entry_id: str = field(compare=False)
    attempt: int = field(compare=False)
    """Attempts made so far."""
    first_failed: float = field(compare=False)
    """Unix time of the first failure seen."""
    touched: float = field(compare=False)
    """Monotonic time this consumer last (re)claimed the entry, resetting its idle time."""


class RetrySchedule:
    """Waiting events by due time (monotonic seconds)."""

    def __init__(self) -> None:
        self._heap: list[Waiting] = []
        self._ids: set[tuple[str, str]] = set()

    def add(self, waiting: Waiting) -> None:
        heapq.heappush(self._heap, waiting)
        self._ids.add((waiting.stream, waiting.entry_id))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._heap)

    def pop_due(self, now: float, limit: int) -> list[Waiting]:
        """Remove and return up to `limit` entries due at `now`, earliest first."""
        due: list[Waiting] = []
        while self._heap and self._heap[0].due <= now and len(due) < limit:
            w = heapq.heappop(self._heap)
            self._ids.discard((w.stream, w.entry_id))
            due.append(w)
        return due

    def next_due(self) -> float | None:
        return self._heap[0].due if self._heap else None

    def stale(self, now: float, older_than: float) -> list[Waiting]:
        """Entries last touched more than `older_than` seconds ago (still scheduled)."""
        return [w for w in self._heap if now - w.touched > older_than]

    def drop(self, keys: set[tuple[str, str]]) -> None:
        """Forget entries another consumer has taken over."""
        if not keys:
            return
        self._heap = [w for w in self._heap if (w.stream, w.entry_id) not in keys]
        heapq.heapify(self._heap)
        self._ids -= keys

    def clear(self) -> None:
        self._heap.clear()
        self._ids.clear()
