"""conveyor.sampling.remote_context reads a traceparent as the SDK's W3C propagator does.

The consumer's and the relay's shortcuts around the SDK's sampling decision must decide as the
SDK would (conveyor.sampling's docstring: "the consumer takes the same decisions itself first").
The SDK reads a traceparent with the W3C propagator, which ignores one that is not lower-case
hex (the W3C spec: such a header MUST be ignored), so the event's process span is a root,
sampled at the root ratio; the shortcuts parse it with int(x, 16), which takes upper case, signs
and underscores, and so drop the event (consumer) or trace a hop the consumer never joins
(relay)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from consumers import spans as consumer_spans
from consumers.context import EventContext
from consumers.deliveries import Delivery, Entry
from conveyor import telemetry as t
from conveyor import wire
from conveyor.sampling import ConveyorSampler, not_sampled, remote_context
from conveyor.v1 import event_pb2
from relay import spans as relay_spans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
IGNORED_BY_THE_SDK = [
    pytest.param(f"00-{TRACE_ID.upper()}-{SPAN_ID.upper()}-00", id="upper-case-ids"),
    pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-0A", id="upper-case-flags"),
    pytest.param(f"00-+{TRACE_ID[1:]}-{SPAN_ID}-00", id="plus-sign-in-trace-id"),
]
PLAIN = f"00-{TRACE_ID}-{SPAN_ID}"
AS_THE_SDK_READS_THEM = [
    f"{PLAIN}-01",
    f"{PLAIN}-00",
    f"{PLAIN}-03",
    f"{PLAIN}-02",
    f"{PLAIN}-ff",
    f" \t{PLAIN}-01 \t",
    f"{PLAIN}-01\n",
    f"{PLAIN}-01\n\n",
    f"{PLAIN}-01-",
    f"{PLAIN}-01-extra",
    f"{PLAIN}-01x",
    f"01-{TRACE_ID}-{SPAN_ID}-01-future-parts",
    f"01-{TRACE_ID}-{SPAN_ID}-00-future-parts",
    f"01-{TRACE_ID}-{SPAN_ID}-01",
    f"01-{TRACE_ID}-{SPAN_ID}-01x",
    f"01-{TRACE_ID}-{SPAN_ID}-01-a\nb",
    f"fe-{TRACE_ID}-{SPAN_ID}-01-x",
    f"ff-{TRACE_ID}-{SPAN_ID}-01",
    f"ff-{TRACE_ID}-{SPAN_ID}-00",
    f"00-{'0' * 32}-{SPAN_ID}-01",
    f"00-{TRACE_ID}-{'0' * 16}-01",
    f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
    f"00-{TRACE_ID}-{SPAN_ID.upper()}-00",
    f"00-{TRACE_ID}-{SPAN_ID}-0B",
    f"0A-{TRACE_ID}-{SPAN_ID}-01",
    f"00-+{TRACE_ID[1:]}-{SPAN_ID}-00",
    f"00-{TRACE_ID[:-1]}_-{SPAN_ID}-00",
    f"00-{TRACE_ID}-{SPAN_ID}-1",
    f"00-{TRACE_ID}0-{SPAN_ID}-01",
    f"01-{TRACE_ID}-{SPAN_ID}-01-" + "x" * 456,  # 512 characters
    f"01-{TRACE_ID}-{SPAN_ID}-01-" + "x" * 457,  # 513: over the propagator's maximum
    "",
    "garbage",
]


@pytest.mark.parametrize("traceparent", AS_THE_SDK_READS_THEM)
def test_a_traceparent_is_read_exactly_as_the_sdk_propagator_reads_it(traceparent: str) -> None:
    extracted = TraceContextTextMapPropagator().extract({t.HEADER_TRACEPARENT: traceparent})
    sdk = trace.get_current_span(extracted).get_span_context()
    ours = remote_context(traceparent)
    if not sdk.is_valid:
        assert ours is None
        assert not_sampled(traceparent) is None
        assert relay_spans.sampled_context(traceparent) is None
        return
    assert ours is not None
    assert (ours.trace_id, ours.span_id, ours.trace_flags, ours.is_remote) == (
        sdk.trace_id,
        sdk.span_id,
        sdk.trace_flags,
        True,
    )
    kept_by_relay = relay_spans.sampled_context(traceparent)
    dropped_by_consumer = not_sampled(traceparent)
    if sdk.trace_flags.sampled:
        assert kept_by_relay == sdk and dropped_by_consumer is None
    else:
        assert kept_by_relay is None and dropped_by_consumer == sdk


IGNORED_BUT_SAMPLED_FLAG = [
    pytest.param(f"00-{TRACE_ID.upper()}-{SPAN_ID.upper()}-01", id="upper-case-ids"),
    pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-z1", id="non-hex-flags"),
    pytest.param(f"zz-{TRACE_ID}-{SPAN_ID}-01", id="non-hex-version"),
    pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-0B", id="upper-case-flags"),
]


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans of a provider whose sampler keeps every root (ratio 1), used by both modules."""
    out = InMemorySpanExporter()
    provider = TracerProvider(sampler=ConveyorSampler(1.0))
    provider.add_span_processor(SimpleSpanProcessor(out))
    tracer = provider.get_tracer(t.TRACER)
    monkeypatch.setattr(consumer_spans, "_tracer", tracer)
    monkeypatch.setattr(relay_spans, "_tracer", tracer)
    yield out
    provider.shutdown()


def _delivery(traceparent: str) -> Delivery:
    event_id = str(uuid.uuid4())
    envelope = event_pb2.Event(id=event_id, type="t.T", aggregate_id="a")
    envelope.headers[t.HEADER_TRACEPARENT] = traceparent
    fields = [wire.F_EVENT_ID, event_id.encode(), wire.F_EVENT, envelope.SerializeToString()]
    entry = Entry("conveyor:{t}:events", "1-0", fields)
    ctx = EventContext(envelope, "t", entry.stream, entry.entry_id, "g", 1)
    return Delivery(entry, event_id, "t.T", "a", None, None, ctx)


@pytest.mark.parametrize("traceparent", IGNORED_BY_THE_SDK)
def test_the_consumer_keeps_what_the_sdk_would_keep(
    exporter: InMemorySpanExporter, traceparent: str
) -> None:
    d = _delivery(traceparent)
    sdk_parent = trace.get_current_span(propagate.extract(d.ctx.headers)).get_span_context()
    assert not sdk_parent.is_valid, "the SDK ignores this traceparent: the span is a root"
    span = consumer_spans.start_process(d, ratio=1.0)  # every root is kept at ratio 1
    span.end()
    assert span.is_recording() or exporter.get_finished_spans(), (
        "the fast path dropped an event the SDK's sampler would have traced"
    )


@pytest.mark.parametrize("traceparent", IGNORED_BUT_SAMPLED_FLAG)
def test_the_relay_traces_no_hop_in_a_trace_the_consumer_never_joins(
    exporter: InMemorySpanExporter, traceparent: str
) -> None:
    sdk_parent = trace.get_current_span(
        propagate.extract({t.HEADER_TRACEPARENT: traceparent})
    ).get_span_context()
    assert not sdk_parent.is_valid, "the consumer's SDK ignores it and starts a fresh trace"
    assert relay_spans.sampled_context(traceparent) is None
