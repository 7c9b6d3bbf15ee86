"""docs/tracing.md: batch-span links are capped (the SDK's default OTEL_SPAN_LINK_COUNT_LIMIT,
128) "past that the links are left out and `conveyor.links.dropped` says how many", and "every
other standard variable of the SDK ... applies". With OTEL_SPAN_LINK_COUNT_LIMIT set lower, the
SDK drops the links past its limit and conveyor.links.dropped does not count them (relay/spans.py
caps at the constant MAX_SPAN_LINKS, not at the provider's limit)."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor import telemetry as t
from relay import spans as relay_spans


async def test_links_dropped_counts_what_the_configured_limit_leaves_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "10")
    out = InMemorySpanExporter()
    provider = TracerProvider()  # reads the standard limits from the environment
    provider.add_span_processor(SimpleSpanProcessor(out))
    monkeypatch.setattr(relay_spans, "_tracer", provider.get_tracer(t.TRACER))
    n = 25
    rows = [
        (i, uuid.uuid4(), "identity", "t", "a", f"00-{i + 1:032x}-{i + 1:016x}-01", b"")
        for i in range(n)
    ]

    async def publish(_rows: object) -> dict[str, int]:
        return {"k": n}

    await relay_spans.publish_traced(publish, rows, name=t.SPAN_RELAY_PUBLISH, attributes={})
    (batch,) = [s for s in out.get_finished_spans() if s.parent is None]
    assert batch.attributes is not None
    linked = len(batch.links)
    assert linked == 10, "the SDK keeps its configured limit"
    assert batch.attributes.get(t.ATTR_LINKS_DROPPED, 0) == n - linked, (
        f"{n} sampled events, {linked} linked, but conveyor.links.dropped="
        f"{batch.attributes.get(t.ATTR_LINKS_DROPPED)}"
    )
