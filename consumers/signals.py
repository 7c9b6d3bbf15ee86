"""Control-flow signals a handler may raise."""

from __future__ import annotations


class Retry(Exception):
    """Try this event again later: after `delay` seconds, or the configured backoff when None.

    Counts as a failed attempt; after the last attempt the event becomes a dead letter.
    """

    def __init__(self, reason: str = "", *, delay: float | None = None) -> None:
        if delay is not None and not delay >= 0:
            raise ValueError(f"Retry delay must be >= 0 seconds, got {delay!r}")
        super().__init__(reason or "handler asked for a retry")
        self.delay = delay


class Reject(Exception):
    """This event can never succeed: move it to the dead-letter stream now, without retrying."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
