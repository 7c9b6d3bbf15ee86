"""Conveyor's trace sampler, and what a consumer may decide with it before starting a span.

`ConveyorSampler` is parent-based: a span whose parent is sampled is sampled, one whose parent
is not is dropped; a root is sampled when one of its links is sampled (a relay batch carrying a
traced event, a reprocess of a traced dead letter), else at `ratio`. Starting an SDK span only to
have it dropped costs a consumer ~10-17 us per event, more than the rest of an at-least-once
delivery, so under this sampler the consumer takes the same decisions itself first
(`installed_ratio`, `not_sampled`) and starts a span only for the events it keeps. A root it
keeps carries `ATTR_SAMPLING_RATIO`, which tells the sampler the draw is made.

`remote_context` reads a traceparent exactly as the SDK's W3C propagator does, so these shortcuts
(and the relay's) take a header for a parent only when the SDK would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import Attributes

ATTR_SAMPLING_RATIO = "conveyor.sampling.ratio"
"""On a root span the consumer drew for itself: the ratio it was drawn at."""
_TRACEPARENT = re.compile(
    r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)\n?"
)
"""TraceContextTextMapPropagator's pattern (`^...$` under re.search), for re.fullmatch."""
_TRACEPARENT_MAXIMUM_LENGTH = 512
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16


class LinkedOrRatio(Sampler):
    """Samples a root span already drawn (`ATTR_SAMPLING_RATIO`) or linking to a sampled span,
    and any other root at `ratio`, by trace id."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)
        self.ratio = ratio

    def should_sample(  # noqa: PLR0917 - the Sampler interface
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if (attributes and ATTR_SAMPLING_RATIO in attributes) or (
            links and any(link.context.trace_flags.sampled for link in links)
        ):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._ratio.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"LinkedOrRatio{{{self.ratio}}}"


class ConveyorSampler(ParentBased):
    """Parent-based, with `LinkedOrRatio(ratio)` for roots."""

    def __init__(self, ratio: float) -> None:
        self.root = LinkedOrRatio(ratio)
        super().__init__(root=self.root)
        self.ratio = ratio


def installed_ratio() -> float | None:
    """The root ratio of the installed tracer provider's ConveyorSampler; None under any other
    sampler (OTEL_TRACES_SAMPLER, a provider of the application's), which then decides alone."""
    sampler = getattr(trace.get_tracer_provider(), "sampler", None)
    return sampler.ratio if isinstance(sampler, ConveyorSampler) else None


def remote_context(traceparent: str, sampled: bool | None = None) -> SpanContext | None:
    """The remote span context of a W3C traceparent, None where the SDK's propagator
    (opentelemetry.trace.propagation.tracecontext) would ignore it: longer than 512 characters,
    not lower-case hex in the 2-32-16-2 layout (blanks and tabs around it allowed), an all-zero
    trace or span id, version ff, or version 00 with anything after the flags but blanks. With
    `sampled` given, also None where the sampled flag is not that (checked before the context
    is built: that is most of the cost)."""
    if len(traceparent) > _TRACEPARENT_MAXIMUM_LENGTH:
        return None
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if (
        trace_id == _INVALID_TRACE_ID
        or span_id == _INVALID_SPAN_ID
        or version == "ff"
        or (version == "00" and rest)
    ):
        return None
    trace_flags = int(flags, 16)
    if sampled is not None and bool(trace_flags & TraceFlags.SAMPLED) is not sampled:
        return None
    return SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(trace_flags)
    )


def not_sampled(traceparent: str) -> SpanContext | None:
    """The span context of a traceparent the SDK takes (`remote_context`) whose sampled flag is
    clear (a parent the sampler would drop every child of); None for any other."""
    return remote_context(traceparent, sampled=False)
