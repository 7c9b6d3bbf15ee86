"""The relay's spans: one per published batch, linked to the sampled events it carried, and one
per sampled event, in that event's own trace."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext

from conveyor import telemetry as t
from conveyor.sampling import remote_context
from relay.store import Row

_tracer = trace.get_tracer(t.TRACER)
_SAMPLED_FLAGS = frozenset("13579bdf")
"""Last (lower-case hex) digit of a traceparent's flags with the sampled bit set."""
_TRACEPARENT_LENGTH = 55
"""Of a version-00 traceparent with nothing around it: its flags end it."""


def tracing_enabled() -> bool:
    """True once a real TracerProvider is installed: only then is per-event span work done."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def sampled_context(traceparent: str | None) -> SpanContext | None:
    """The producer's span context of a traceparent the SDK's propagator takes
    (conveyor.sampling's `remote_context`) whose sampled flag is set; None for one that is
    missing, malformed or not sampled. A traceparent of the usual 55 characters shows its
    flags' last digit at its end: most are looked at no further."""
    if not traceparent or (
        len(traceparent) == _TRACEPARENT_LENGTH and traceparent[-1] not in _SAMPLED_FLAGS
    ):
        return None
    return remote_context(traceparent, sampled=True)


def link_cap() -> int:
    """Links a batch span carries: MAX_SPAN_LINKS, or the SDK tracer's own limit
    (OTEL_SPAN_LINK_COUNT_LIMIT, or the application provider's SpanLimits) when lower, so
    ATTR_LINKS_DROPPED counts every link the SDK would leave out."""
    tracer = _tracer
    if isinstance(tracer, trace.ProxyTracer):  # got before the provider was installed
        tracer = tracer._tracer  # the SDK tracer it forwards to
    limit = getattr(getattr(tracer, "_span_limits", None), "max_links", None)  # SDK Tracer
    if isinstance(limit, int) and 0 <= limit < t.MAX_SPAN_LINKS:
        return limit
    return t.MAX_SPAN_LINKS


async def publish_traced(
    publish: Callable[[Sequence[Row]], Awaitable[dict[str, int]]],
    rows: Sequence[Row],
    *,
    name: str,
    attributes: dict[str, Any],
) -> dict[str, int]:
    """`publish(rows)` inside a CLIENT span for the batch (a root: relay batches belong to no
    event's trace) linking to each row's sampled producer context, at most `link_cap()` of
    them; then one span per sampled row, a child of its producer's context, timed as the batch's
    pipelined XADD was. Rows whose trace is not sampled cost one look at their flags."""
    sampled = [(row, ctx) for row in rows if (ctx := sampled_context(row[5])) is not None]
    attrs = {
        t.ATTR_MESSAGING_SYSTEM: t.MESSAGING_SYSTEM,
        t.ATTR_MESSAGING_OPERATION_TYPE: t.OPERATION_SEND,
        t.ATTR_MESSAGING_OPERATION_NAME: t.OPERATION_SEND,
        t.ATTR_BATCH_MESSAGE_COUNT: len(rows),
        **attributes,
    }
    cap = link_cap()
    if len(sampled) > cap:
        attrs[t.ATTR_LINKS_DROPPED] = len(sampled) - cap
    links = [Link(ctx) for _, ctx in sampled[:cap]]
    started = time.time_ns()
    error: BaseException | None = None
    with _tracer.start_as_current_span(
        name, context=Context(), kind=trace.SpanKind.CLIENT, links=links, attributes=attrs
    ) as batch:
        try:
            return await publish(rows)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if sampled:
                _per_event(sampled, name, batch, started, error)


def _per_event(
    sampled: list[tuple[Row, SpanContext]],
    name: str,
    batch: trace.Span,
    started: int,
    error: BaseException | None,
) -> None:
    ended = time.time_ns()
    batch_context = batch.get_span_context()
    links = [Link(batch_context)] if batch_context.trace_flags.sampled else None
    for row, ctx in sampled:
        attrs: dict[str, Any] = {
            t.ATTR_MESSAGING_SYSTEM: t.MESSAGING_SYSTEM,
            t.ATTR_MESSAGING_OPERATION_TYPE: t.OPERATION_SEND,
            t.ATTR_MESSAGING_OPERATION_NAME: t.OPERATION_SEND,
            t.ATTR_MESSAGING_DESTINATION: row[2],
            t.ATTR_MESSAGE_ID: str(row[1]),
            t.ATTR_EVENT_TYPE: row[3],
        }
        if error is not None:
            attrs[t.ATTR_ERROR_TYPE] = type(error).__qualname__
        span = _tracer.start_span(
            name,
            context=trace.set_span_in_context(NonRecordingSpan(ctx)),
            kind=trace.SpanKind.CLIENT,
            attributes=attrs,
            links=links,
            start_time=started,
        )
        if error is not None:
            span.set_status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
        span.end(end_time=ended)
