"""How long to wait before trying again (`RetryPolicy`), and sleeping unless stopped (`pause`)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

Jitter = Literal["none", "full", "equal"]
"""How a delay is drawn below its ceiling: not at all, from [0, ceiling] ("full jitter"), or
from [ceiling / 2, ceiling] ("equal jitter": never much shorter than planned)."""

JITTERS: tuple[Jitter, ...] = ("none", "full", "equal")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: `initial` after the first failure, times `multiplier` after each
    further one, never over `maximum`, jittered as `jitter` says. Validated on construction."""

    initial: timedelta
    """Ceiling of the wait after the first failed attempt."""
    maximum: timedelta
    """Cap on every wait, however many attempts failed."""
    multiplier: float = 2.0
    """Growth of the ceiling per failed attempt."""
    jitter: Jitter = "none"
    _initial: float = field(init=False, repr=False, compare=False)
    _maximum: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.initial > timedelta(0):
            raise ValueError(f"initial must be > 0, got {self.initial!r}")
        if self.maximum < self.initial:
            raise ValueError(f"maximum ({self.maximum!r}) must be >= initial ({self.initial!r})")
        if not self.multiplier >= 1.0:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.jitter not in JITTERS:
            raise ValueError(f"jitter must be one of {', '.join(JITTERS)}, got {self.jitter!r}")
        # Seconds as floats once: a delay is asked for on every failure.
        object.__setattr__(self, "_initial", self.initial.total_seconds())
        object.__setattr__(self, "_maximum", self.maximum.total_seconds())

    @classmethod
    def of_seconds(
        cls, initial: float, maximum: float, *, multiplier: float = 2.0, jitter: Jitter = "none"
    ) -> RetryPolicy:
        """The policy for waits given in seconds, as settings hold them. A positive wait shorter
        than a timedelta's resolution (1 µs) is raised to 1 µs rather than rounded to zero."""
        return cls(
            _at_least_a_microsecond(initial),
            _at_least_a_microsecond(maximum),
            multiplier=multiplier,
            jitter=jitter,
        )

    def ceiling(self, attempt: int) -> float:
        """Seconds the wait after failed attempt `attempt` (1 for the first) is drawn below."""
        try:
            grown = self._initial * self.multiplier ** max(attempt - 1, 0)
        except OverflowError:  # a very long outage: the cap was reached long ago
            return self._maximum
        return min(self._maximum, grown)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1 for the first), jitter applied."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "full":
            return random.uniform(0, ceiling)
        if self.jitter == "equal":
            return ceiling / 2 + random.uniform(0, ceiling / 2)
        return ceiling


def _at_least_a_microsecond(seconds: float) -> timedelta:
    wait = timedelta(seconds=seconds)
    if seconds > 0 and wait < _MICROSECOND:
        return _MICROSECOND
    return wait


_MICROSECOND = timedelta(microseconds=1)


async def pause(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, or less when `stopping` is set meanwhile; True when it was set."""
    try:
        async with asyncio.timeout(seconds):
            await stopping.wait()
    except TimeoutError:
        return False
    return True
