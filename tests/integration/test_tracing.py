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
from relay import spans as relay_spans
from relay.spans import publish_traced
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


async def test_a_retry_and_a_last_failure_show_on_their_process_spans(
    case: Case, spans: InMemorySpanExporter
) -> None:
    await create_effects(case.pg, case.schema)

    def fail_twice(ctx: EventContext) -> None:
        if ctx.attempt <= 2:
            raise RuntimeError(f"attempt {ctx.attempt} fails")

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("http request") as request:
        async with case.pg.transaction():
            await enqueue(
                case.pg,
                events_pb2.UserRegistered(user_id="u1"),
                aggregate_type="user",
                aggregate_id="u1",
                topic="identity",
                schema=case.schema,
            )
    trace_id = request.get_span_context().trace_id
    settings = consumer_settings(case, max_attempts=2)
    async with (
        running_relay(**case.relay_settings()),
        running_consumer(effect_router(case.schema, fail=fail_twice), **settings),
    ):

        async def dead() -> bool:
            return await case.redis.xlen(wire.Keys("identity", case.prefix).dlq) == 1

        await wait_until(dead, what="a dead letter after two attempts")
    processed = sorted(
        (s for s in spans.get_finished_spans() if s.name == telemetry.SPAN_PROCESS),
        key=lambda s: s.attributes[telemetry.ATTR_ATTEMPT],
    )
    assert [s.attributes[telemetry.ATTR_ATTEMPT] for s in processed] == [1, 2]
    assert {s.context.trace_id for s in processed} == {trace_id}
    first, last = processed
    (retry,) = [e for e in first.events if e.name == telemetry.EVENT_RETRY]
    assert retry.attributes[telemetry.ATTR_ERROR_TYPE] == "RuntimeError"
    assert retry.attributes[telemetry.ATTR_ATTEMPT] == 1
    assert 0 < retry.attributes[telemetry.ATTR_RETRY_DELAY] <= 0.2
    (dead_letter,) = [e for e in last.events if e.name == telemetry.EVENT_DEAD_LETTER]
    assert dead_letter.attributes[telemetry.ATTR_DEAD_LETTER_REASON] == "max_attempts"
    assert dead_letter.attributes[telemetry.ATTR_ERROR_TYPE] == "RuntimeError"
    assert not first.status.is_ok and not last.status.is_ok
    (move,) = [s for s in spans.get_finished_spans() if s.name == telemetry.SPAN_DEAD_LETTER]
    assert move.parent is not None and move.parent.span_id == last.context.span_id
    ((_id, fields),) = await case.redis.xrange(wire.Keys("identity", case.prefix).dlq)
    span_id = f"{last.context.span_id:016x}"
    assert fields[wire.DL_TRACEPARENT].decode().split("-")[2] == span_id, "names the failed span"


async def test_a_batch_span_links_at_most_the_cap_and_counts_the_rest(
    spans: InMemorySpanExporter,
) -> None:
    n = telemetry.MAX_SPAN_LINKS + 5
    parents = [(i + 1, i + 1) for i in range(n)]
    rows = [
        (i, uuid.uuid4(), "identity", "t", "a", f"00-{tid:032x}-{sid:016x}-01", b"")
        for i, (tid, sid) in enumerate(parents)
    ]
    rows.append((n, uuid.uuid4(), "identity", "t", "a", f"00-{7:032x}-{7:016x}-00", b""))

    async def publish_rows(_rows: object) -> dict[str, int]:
        return {"k": len(rows)}

    await publish_traced(publish_rows, rows, name=telemetry.SPAN_RELAY_PUBLISH, attributes={})
    finished = spans.get_finished_spans()
    (batch,) = [s for s in finished if telemetry.ATTR_BATCH_MESSAGE_COUNT in s.attributes]
    assert batch.attributes[telemetry.ATTR_BATCH_MESSAGE_COUNT] == n + 1
    assert len(batch.links) == telemetry.MAX_SPAN_LINKS
    assert batch.attributes[telemetry.ATTR_LINKS_DROPPED] == 5
    assert batch.parent is None and batch.kind is trace.SpanKind.CLIENT
    per_event = [s for s in finished if s is not batch]
    assert len(per_event) == n, "one per sampled event, none for the unsampled one"
    assert {(s.context.trace_id, s.parent.span_id) for s in per_event if s.parent} == set(parents)


@pytest.mark.parametrize("proxied", [False, True], ids=["sdk-tracer", "proxy-tracer"])
async def test_links_dropped_counts_what_the_configured_limit_leaves_out(
    monkeypatch: pytest.MonkeyPatch, proxied: bool
) -> None:
    """With OTEL_SPAN_LINK_COUNT_LIMIT below the cap, the SDK keeps that many links and
    conveyor.links.dropped counts the rest, also through the proxy tracer the relay holds when
    it got its tracer before the provider was installed."""
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "10")
    out = InMemorySpanExporter()
    provider = TracerProvider()  # reads the standard limits from the environment
    provider.add_span_processor(SimpleSpanProcessor(out))
    tracer: trace.Tracer = provider.get_tracer(telemetry.TRACER)
    if proxied:
        proxy = trace.ProxyTracer(telemetry.TRACER)
        proxy._real_tracer = tracer
        tracer = proxy
    monkeypatch.setattr(relay_spans, "_tracer", tracer)
    n = 25
    rows = [
        (i, uuid.uuid4(), "identity", "t", "a", f"00-{i + 1:032x}-{i + 1:016x}-01", b"")
        for i in range(n)
    ]

    async def publish(_rows: object) -> dict[str, int]:
        return {"k": n}

    await publish_traced(publish, rows, name=telemetry.SPAN_RELAY_PUBLISH, attributes={})
    (batch,) = [s for s in out.get_finished_spans() if s.parent is None]
    assert batch.attributes is not None
    linked = len(batch.links)
    assert linked == 10, "the SDK keeps its configured limit"
    assert batch.attributes.get(telemetry.ATTR_LINKS_DROPPED, 0) == n - linked, (
        f"{n} sampled events, {linked} linked, but conveyor.links.dropped="
        f"{batch.attributes.get(telemetry.ATTR_LINKS_DROPPED)}"
    )
