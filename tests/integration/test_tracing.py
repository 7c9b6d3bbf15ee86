"""Traces run end to end: producer -> relay -> consumer -> dead letter (BRIEF guarantee 6)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumers import EventContext, Reject
from conveyor import telemetry, wire
from conveyor.identity.v1 import events_pb2
from conveyor.v1 import event_pb2
from relay import enqueue
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    publish,
    running_consumer,
)
from tests.integration.relay_support import drained, running_relay
from tests.processes import wait_until

_EXPORTER = InMemorySpanExporter()
_ATTACHED: list[TracerProvider] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if provider not in _ATTACHED:  # another module may have installed the provider
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _ATTACHED.append(provider)
    _EXPORTER.clear()
    yield _EXPORTER


async def test_one_trace_from_the_producer_to_the_handler_and_the_dead_letter(
    case: Case, spans: InMemorySpanExporter
) -> None:
    await create_effects(case.pg, case.schema)

    def reject_second(ctx: EventContext) -> None:
        if ctx.aggregate_id == "u2":
            raise Reject("u2 is refused")

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("http request") as request:
        async with case.pg.transaction():
            for user in ("u1", "u2"):
                await enqueue(
                    case.pg,
                    events_pb2.UserRegistered(user_id=user),
                    aggregate_type="user",
                    aggregate_id=user,
                    topic="identity",
                    schema=case.schema,
                )
    trace_id = request.get_span_context().trace_id
    router = effect_router(case.schema, fail=reject_second)
    async with (
        running_relay(**case.relay_settings()),
        running_consumer(router, **consumer_settings(case)),
    ):
        await wait_until(lambda: drained(case.pg, case.schema), what="published")

        async def done() -> bool:
            dlq = await case.redis.xlen(wire.Keys("identity", case.prefix).dlq)
            return dlq == 1 and len(await effect_counts(case.pg, case.schema, "g")) == 1

        await wait_until(done, what="one applied, one dead letter")
    by_name: dict[str, list[trace.Span]] = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)  # type: ignore[arg-type]
    enqueues = by_name[telemetry.SPAN_ENQUEUE]
    processed = by_name[telemetry.SPAN_PROCESS]
    (dead,) = by_name[telemetry.SPAN_DEAD_LETTER]
    assert {s.context.trace_id for s in enqueues + processed + [dead]} == {trace_id}
    assert {s.parent.span_id for s in processed} <= {s.context.span_id for s in enqueues}
    ((_id, fields),) = await case.redis.xrange(wire.Keys("identity", case.prefix).dlq)
    assert f"{trace_id:032x}" in fields[wire.DL_TRACEPARENT].decode()


@pytest.mark.parametrize("traceparent", ["garbage", "00-zz-yy-01", ""])
async def test_malformed_traceparent_starts_a_fresh_trace_and_is_processed(
    case: Case, spans: InMemorySpanExporter, traceparent: str
) -> None:
    await create_effects(case.pg, case.schema)
    ids = await publish(case.redis, case.prefix, 1)
    # The entry arrives from elsewhere with a broken traceparent in its envelope and fields.
    key = wire.Keys("identity", case.prefix).events
    ((_entry_id, fields),) = await case.redis.xrange(key)
    event = event_pb2.Event.FromString(fields[wire.F_EVENT])
    event.headers["traceparent"] = traceparent
    fields[wire.F_EVENT] = event.SerializeToString()
    fields[wire.F_TRACEPARENT] = traceparent.encode()
    await case.redis.delete(key)
    await case.redis.xadd(key, fields)
    async with running_consumer(effect_router(case.schema), **consumer_settings(case)):

        async def applied() -> bool:
            return await effect_counts(case.pg, case.schema, "g") == {ids[0]: 1}

        await wait_until(applied, what="processed normally")
    (span,) = [s for s in spans.get_finished_spans() if s.name == telemetry.SPAN_PROCESS]
    assert span.parent is None, "a fresh trace"
    assert uuid.UUID(span.attributes[telemetry.ATTR_MESSAGE_ID]) == uuid.UUID(ids[0])
