"""The consumer's spans: one CONSUMER span per handler call, in the event's trace (or, for a
reprocessed dead letter, in a new trace linked to the original); retries and dead letters as
events on it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext

from consumers.deliveries import Delivery, Entry
from conveyor import telemetry as t
from conveyor import wire
from conveyor.sampling import ATTR_SAMPLING_RATIO, not_sampled

_tracer = trace.get_tracer(t.TRACER)


def tracing_enabled() -> bool:
    """True once a real TracerProvider is installed: only then are per-event spans worth their
    cost (extracting the producer's context and starting a span, a few microseconds each)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def start_process(d: Delivery, ratio: float | None) -> Span:
    """Start (not make current) the CONSUMER span of one handler call: a child of the event's
    context, whose missing or malformed traceparent starts a fresh trace; for a dead letter being
    reprocessed, a new trace linked to the span that dead-lettered it.

    `ratio` is conveyor.sampling's root ratio when its sampler is installed (None otherwise):
    an event the sampler would drop then gets no SDK span at all, only a non-recording one
    carrying its unsampled parent (so spans the handler starts are dropped alike), or none for
    a root not drawn (the handler's own spans are then roots of their own)."""
    reprocessed = _reprocessed(d.entry)
    if ratio is not None and reprocessed is None:
        traceparent = d.ctx.headers.get(t.HEADER_TRACEPARENT)
        if traceparent is None:
            if random.random() >= ratio:
                return trace.INVALID_SPAN
        elif (dropped := not_sampled(traceparent)) is not None:
            return trace.NonRecordingSpan(dropped)
    attributes: dict[str, Any] = {
        t.ATTR_MESSAGING_SYSTEM: t.MESSAGING_SYSTEM,
        t.ATTR_MESSAGING_OPERATION_TYPE: t.OPERATION_PROCESS,
        t.ATTR_MESSAGING_OPERATION_NAME: t.OPERATION_PROCESS,
        t.ATTR_MESSAGING_DESTINATION: d.ctx.topic,
        t.ATTR_CONSUMER_GROUP: d.ctx.group,
        t.ATTR_MESSAGE_ID: d.event_id,
        t.ATTR_EVENT_TYPE: d.event_type,
        t.ATTR_ATTEMPT: d.ctx.attempt,
    }
    if ratio is not None and reprocessed is None and t.HEADER_TRACEPARENT not in d.ctx.headers:
        attributes[ATTR_SAMPLING_RATIO] = ratio  # drawn above: the sampler keeps it
    if reprocessed is None:
        context, links = propagate.extract(d.ctx.headers), None
    else:
        dead_letter, original = reprocessed
        attributes[t.ATTR_DEAD_LETTER_ENTRY] = dead_letter
        context, links = Context(), ([Link(original)] if original is not None else None)
    return _tracer.start_span(
        t.SPAN_PROCESS,
        context=context,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
    )


def _reprocessed(entry: Entry) -> tuple[str, SpanContext | None] | None:
    """(dead letter's entry id, its recorded span context) of a retry-stream entry that
    reprocesses a dead letter; None for any other entry. Entries in the relay's layout end with
    the event field, so they are told apart without building their field dict."""
    raw = entry.raw
    if isinstance(raw, list) and len(raw) >= 2 and raw[-2] == wire.F_EVENT:
        return None
    fields = entry.fields
    dead_letter = fields.get(wire.RT_DEAD_LETTER)
    if dead_letter is None:
        return None
    traceparent = fields.get(wire.RT_TRACEPARENT)
    original = None
    if traceparent:
        found = trace.get_current_span(
            propagate.extract({t.HEADER_TRACEPARENT: traceparent.decode(errors="replace")})
        ).get_span_context()
        original = found if found.is_valid else None
    return dead_letter.decode(errors="replace"), original


def fail(span: Span, error: BaseException) -> None:
    """Mark a handler call's span failed; it stays open until the failure is settled."""
    span.set_attribute(t.ATTR_ERROR_TYPE, _error_type(error))
    span.set_status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")


@contextmanager
def settling(span: Span | None) -> Iterator[None]:
    """Make a failed handler call's span current while its failure is settled (a retry planned,
    or a dead letter written, which add their events to it), then end it."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=True):
        yield


def retry_event(error: BaseException | None, attempt: int, delay: float) -> None:
    """Record on the current span that the event is to be tried again after `delay` seconds."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            t.EVENT_RETRY,
            {
                t.ATTR_ERROR_TYPE: _error_type(error),
                t.ATTR_ATTEMPT: attempt,
                t.ATTR_RETRY_DELAY: delay,
            },
        )


def dead_letter_parent(entry: Entry, reason: str, error_class: str) -> Context | None:
    """The context a dead-letter span starts in: the current span's (a failed handler call,
    which gets an event saying why) when there is one, else the event's own (poison never
    reaches a handler)."""
    span = trace.get_current_span()
    if span.get_span_context().is_valid:
        if span.is_recording():
            span.add_event(
                t.EVENT_DEAD_LETTER,
                {
                    t.ATTR_ERROR_TYPE: error_class,
                    t.ATTR_DEAD_LETTER_REASON: reason,
                    t.ATTR_ATTEMPT: entry.attempt,
                },
            )
        return None
    original = entry.fields.get(wire.F_TRACEPARENT)
    carrier = {t.HEADER_TRACEPARENT: original.decode(errors="replace")} if original else {}
    return propagate.extract(carrier)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, None without one."""
    out: dict[str, str] = {}
    propagate.inject(out)
    return out.get(t.HEADER_TRACEPARENT)


def _error_type(error: BaseException | None) -> str:
    if error is None:
        return "_OTHER"
    return type(error).__qualname__
