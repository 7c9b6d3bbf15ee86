"""Routing events to the handlers users write: `@router.handler` and `@router.batch_handler`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from google.protobuf.message import Message

from consumers.context import EventContext
from consumers.errors import RouterError
from conveyor import wire

EventHandler = Callable[[Any, EventContext], Awaitable[None]]
"""`async def f(event, ctx)`: one event; `event` is the decoded payload message."""
BatchHandler = Callable[[Sequence[tuple[Any, EventContext]], Any], Awaitable[None]]
"""`async def f(items, db)`: several events of one type, as (payload, ctx) pairs, in one call."""
F = TypeVar("F", bound=Callable[..., Awaitable[None]])

UnknownTypePolicy = Literal["dead_letter", "skip"]


@dataclass(frozen=True, slots=True)
class Route:
    """One registered handler."""

    topic: str
    message_type: type[Message]
    fn: Callable[..., Awaitable[None]]
    batch: bool
    event_type: str = field(init=False)
    """Full protobuf name of the message type: the events' `type`."""
    type_url_suffix: str = field(init=False)
    """How the type URL of a google.protobuf.Any holding this type ends."""

    def __post_init__(self) -> None:
        name = str(self.message_type.DESCRIPTOR.full_name)
        object.__setattr__(self, "event_type", name)
        object.__setattr__(self, "type_url_suffix", "/" + name)


class Router:
    """Maps (topic, event type) to a handler.

    `unknown_type` says what happens to an event of a type no handler is registered for on its
    topic: "dead_letter" (the default: dead letter at once, reason unknown_type) or "skip"
    (acknowledged, counted, recorded as skipped in the ledger). Never a silent ack.
    """

    def __init__(self, *, unknown_type: UnknownTypePolicy = "dead_letter") -> None:
        if unknown_type not in ("dead_letter", "skip"):
            raise RouterError(f"unknown_type must be 'dead_letter' or 'skip', got {unknown_type!r}")
        self.unknown_type: UnknownTypePolicy = unknown_type
        self._routes: dict[tuple[str, str], Route] = {}

    def handler(self, message_type: type[Message], *, topic: str) -> Callable[[F], F]:
        """Register `async def f(event, ctx)` for events of `message_type` on `topic`."""
        return self._register(message_type, topic, batch=False)

    def batch_handler(self, message_type: type[Message], *, topic: str) -> Callable[[F], F]:
        """Register `async def f(items, db)` for events of `message_type` on `topic`.

        It receives the events of one batch in stream order as (payload, ctx) pairs and `db`, the
        transaction's connection. If it raises, the batch is split in halves down to single
        events, so only the failing event is retried or dead-lettered.
        """
        return self._register(message_type, topic, batch=True)

    def _register(
        self, message_type: type[Message], topic: str, *, batch: bool
    ) -> Callable[[F], F]:
        if not (isinstance(message_type, type) and issubclass(message_type, Message)):
            raise RouterError(
                f"handlers are registered for protobuf message classes, got {message_type!r}"
            )
        wire.validate_topic(topic)

        def register(fn: F) -> F:
            route = Route(topic, message_type, fn, batch)
            key = (topic, route.event_type)
            if key in self._routes:
                raise RouterError(
                    f"a handler for {route.event_type} on topic {topic!r} is already registered "
                    f"({self._routes[key].fn.__qualname__})"
                )
            self._routes[key] = route
            return fn

        return register

    def routes_for(self, topic: str) -> dict[str, Route]:
        """Event type -> handler, for one topic."""
        return {etype: route for (t, etype), route in self._routes.items() if t == topic}

    def route(self, topic: str, event_type: str) -> Route | None:
        """The handler for `event_type` on `topic`, or None."""
        return self._routes.get((topic, event_type))

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic some handler is registered for, sorted."""
        return tuple(sorted({topic for topic, _ in self._routes}))

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes.values())
