"""Publish/subscribe conformance, metadata: what a handler sees of an event is what its
producer set."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from consumers import EventContext, Router
from conveyor.identity.v1 import events_pb2
from relay import enqueue
from tests.conformance.support import EVENT_TYPE, members, payload, settings_for
from tests.integration.conftest import Case
from tests.integration.relay_support import running_relay
from tests.processes import wait_until

_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
_SPAN_ID = 0x00F067AA0BA902B7
_IN_INDIA = datetime(2024, 7, 1, 9, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))


def _seen(ctx: EventContext, event: events_pb2.UserRegistered) -> dict[str, Any]:
    """Everything EventContext exposes about the event, as plain values."""
    return {
        "event_id": ctx.event_id,
        "event_type": ctx.event_type,
        "source": ctx.source,
        "aggregate_type": ctx.aggregate_type,
        "aggregate_id": ctx.aggregate_id,
        "occurred_at": ctx.occurred_at,
        "headers": dict(ctx.headers),
        "topic": ctx.topic,
        "group": ctx.group,
        "attempt": ctx.attempt,
        "payload": event,
    }


async def _produce_described(case: Case) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, datetime]:
    """Three events with every field set by hand, with defaults, and with the caller's own
    trace headers; their ids and the time just before the defaulted one was written."""
    chosen = uuid.uuid4()
    explicit_trace = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "congo=t61rcWkgMzE",
    }
    parent = SpanContext(
        _TRACE_ID,
        _SPAN_ID,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("shop", "blue")]),
    )
    with trace.use_span(NonRecordingSpan(parent)):  # the request the producer serves
        async with case.pg.transaction():
            await enqueue(
                case.pg,
                payload(1),
                aggregate_type="order",
                aggregate_id="order-42",
                topic="orders",
                headers={
                    "correlation_id": "corr-1",
                    "causation_id": "cause-1",
                    "tenant": "acmé ☃",
                    "empty": "",
                },
                event_id=chosen,
                occurred_at=datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC),
                source="urn:shop:checkout",
                schema=case.schema,
            )
            before = datetime.now(UTC)
            defaulted = await enqueue(
                case.pg, payload(2), aggregate_type="orders", aggregate_id="o", schema=case.schema
            )
            own_trace = await enqueue(
                case.pg,
                payload(3),
                aggregate_type="order",
                aggregate_id="order-43",
                topic="orders",
                headers=explicit_trace,
                occurred_at=_IN_INDIA,
                schema=case.schema,
            )
    return chosen, defaulted, own_trace, before


async def test_metadata_set_by_the_producer_is_what_the_handler_sees(case: Case, mode: str) -> None:
    """Event id, type, source, aggregate, occurred_at, headers and the trace context: what
    `EventContext` exposes equals what the producer set, or its documented default."""
    chosen, defaulted, own_trace, before = await _produce_described(case)
    seen: dict[str, dict[str, Any]] = {}

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        seen[ctx.event_id] = _seen(ctx, event)

    router = Router()
    router.handler(events_pb2.UserRegistered, topic="orders")(handler)
    async with (
        running_relay(**case.relay_settings()),
        members((router, settings_for(case, "audit", "m1", mode))),
    ):

        async def all_seen() -> bool:
            return len(seen) == 3

        await wait_until(all_seen, timeout=20, what="three events handled")

    first = seen[str(chosen)]
    traceparent = first["headers"].pop("traceparent")
    assert first == {
        "event_id": str(chosen),
        "event_type": EVENT_TYPE,
        "source": "urn:shop:checkout",
        "aggregate_type": "order",
        "aggregate_id": "order-42",
        "occurred_at": datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC),
        "headers": {
            "correlation_id": "corr-1",
            "causation_id": "cause-1",
            "tenant": "acmé ☃",
            "empty": "",
            "tracestate": "shop=blue",
        },
        "topic": "orders",
        "group": "audit",
        "attempt": 1,
        "payload": payload(1),
    }
    version, trace_id, _span, _flags = traceparent.split("-")
    assert (version, int(trace_id, 16)) == ("00", _TRACE_ID), (
        f"the event carries the producer's trace, got {traceparent}"
    )

    second = seen[str(defaulted)]
    assert second["source"] == f"urn:conveyor:{case.schema}", "the default source names the schema"
    assert second["topic"] == "orders", "the topic defaults to the aggregate type"
    assert second["aggregate_type"] == "orders"
    assert before - timedelta(seconds=1) <= second["occurred_at"] <= datetime.now(UTC)
    assert second["occurred_at"].tzinfo is not None

    third = seen[str(own_trace)]
    assert third["headers"] == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "congo=t61rcWkgMzE",
    }, "a traceparent set by the caller is kept as it is"
    assert third["occurred_at"] == _IN_INDIA, "the same instant, whatever the producer's zone"
    assert third["occurred_at"].utcoffset() == timedelta(0)
