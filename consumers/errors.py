"""Errors raised by the consumer runtime."""

from __future__ import annotations


class ConsumerError(Exception):
    """Base of every error the consumers package raises on purpose."""


class RouterError(ConsumerError, ValueError):
    """A router was set up wrongly (e.g. two handlers for one type on one topic)."""


class GroupLost(ConsumerError):
    """The consumer group (or its stream) vanished from Redis, e.g. after Redis restarted empty."""

    def __init__(self, stream: str, group: str) -> None:
        self.stream = stream
        self.group = group
        super().__init__(f"consumer group {group!r} of stream {stream!r} is gone from Redis")
