"""Which traces are kept: the sampler the environment chooses, the link rule for roots, the
relay's cheap look at a traceparent's sampled flag, and when export is on at all."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased
from opentelemetry.trace import Link, SpanContext, TraceFlags

from admin.errors import InvalidInput
from admin.ops import observability as obs
from conveyor.sampling import ATTR_SAMPLING_RATIO, ConveyorSampler, LinkedOrRatio, not_sampled
from relay.spans import sampled_context

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
SAMPLED = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"


def _ratio_of(environ: dict[str, str]) -> float:
    chosen = obs.sampler(environ)
    assert isinstance(chosen, ParentBased)
    root = chosen._root
    assert isinstance(root, LinkedOrRatio)
    return root.ratio


def test_default_is_parent_based_with_one_percent_of_roots() -> None:
    assert _ratio_of({}) == 0.01
    assert _ratio_of({obs.RATIO_VAR: ""}) == 0.01


@pytest.mark.parametrize(("text", "ratio"), [("0", 0.0), ("1", 1.0), (" 0.25 ", 0.25)])
def test_the_ratio_comes_from_conveyor_trace_sample_ratio(text: str, ratio: float) -> None:
    assert _ratio_of({obs.RATIO_VAR: text}) == ratio


@pytest.mark.parametrize("text", ["abc", "1.5", "-0.1", "nan", "inf", "1%"])
def test_a_bad_ratio_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"invalid CONVEYOR_TRACE_SAMPLE_RATIO=.*from 0 to 1"):
        obs.sampler({obs.RATIO_VAR: text})


def test_the_standard_sampler_variables_win() -> None:
    environ = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    assert obs.sampler(environ) is None  # the SDK builds the sampler they name
    with pytest.MonkeyPatch.context() as env:
        for name, value in environ.items():
            env.setenv(name, value)
        assert "TraceIdRatioBased{0.5}" in TracerProvider(sampler=None).sampler.get_description()


def test_a_bad_ratio_fails_even_when_the_standard_sampler_is_set() -> None:
    with pytest.raises(InvalidInput):
        obs.sampler({"OTEL_TRACES_SAMPLER": "always_on", obs.RATIO_VAR: "2"})


def test_a_root_linking_a_sampled_span_is_sampled_whatever_the_ratio() -> None:
    never = LinkedOrRatio(0.0)
    sampled = SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(TraceFlags.SAMPLED))
    unsampled = SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(TraceFlags.DEFAULT))
    assert never.should_sample(None, 1, "x", links=[Link(sampled)]).decision is (
        Decision.RECORD_AND_SAMPLE
    )
    assert never.should_sample(None, 1, "x", links=[Link(unsampled)]).decision is Decision.DROP
    assert never.should_sample(None, 1, "x").decision is Decision.DROP


def test_roots_are_sampled_near_the_ratio() -> None:
    tenth = LinkedOrRatio(0.1)
    kept = sum(
        tenth.should_sample(None, trace_id, "x").decision is Decision.RECORD_AND_SAMPLE
        for trace_id in range(1, 2**127, 2**127 // 10_000)
    )
    assert 900 <= kept <= 1100


def test_only_a_sampled_well_formed_traceparent_gives_a_context() -> None:
    ctx = sampled_context(SAMPLED)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.trace_flags.sampled) == (TRACE_ID, SPAN_ID, True)
    assert sampled_context(SAMPLED[:-2] + "03") is not None  # other flag bits set too
    for text in (
        None,
        "",
        SAMPLED[:-2] + "00",
        SAMPLED[:-2] + "02",
        "garbage",
        "00-zz-yy-01",
        SAMPLED.replace("0af7", "zzzz"),
        f"00-{0:032x}-{SPAN_ID:016x}-01",
        "ff" + SAMPLED[2:],
    ):
        assert sampled_context(text) is None, text


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_SDK_DISABLED": "false"}, False),
    ],
)
def test_export_is_on_only_with_an_endpoint_and_not_disabled(
    environ: dict[str, str], on: bool
) -> None:
    assert obs.exporting(environ) is on


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _record(level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("opentelemetry.x", level, __file__, 1, msg, args, None)


def test_export_failures_log_one_line_per_interval_with_a_count() -> None:
    clock = _Clock()
    failures = obs.ExportFailureLog(30.0, clock)
    first = _record(logging.ERROR, "Failed to export %s to %s", "traces", "127.0.0.1:9")
    assert failures.filter(first)
    assert "0 held back" in first.getMessage()
    assert "Failed to export traces to 127.0.0.1:9" in first.getMessage()
    for step in range(29):
        clock.now += 1
        assert not failures.filter(_record(logging.WARNING, "Transient error %d", step))
    clock.now += 1
    later = _record(logging.ERROR, "Failed to export")
    assert failures.filter(later)
    assert "one line per 30s, 29 held back since the last" in later.getMessage()
    assert failures.filter(_record(logging.DEBUG, "debug lines pass"))


def test_a_consumer_tells_an_unsampled_parent_from_the_traceparent_alone() -> None:
    unsampled = not_sampled(f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00")
    assert unsampled is not None
    assert (unsampled.trace_id, unsampled.span_id) == (TRACE_ID, SPAN_ID)
    assert not unsampled.trace_flags.sampled and unsampled.is_remote
    assert not_sampled(SAMPLED) is None  # kept: the SDK starts its span
    for malformed in ("", "00-xyz", SAMPLED[:-1] + "g", f"ff-{TRACE_ID:032x}-{SPAN_ID:016x}-00"):
        assert not_sampled(malformed) is None  # left to the SDK, which starts a fresh trace


def test_a_root_the_consumer_drew_is_kept_whatever_the_ratio() -> None:
    never = ConveyorSampler(0.0)
    drawn = never.should_sample(
        None, TRACE_ID, "conveyor process", attributes={ATTR_SAMPLING_RATIO: 0.0}
    )
    assert drawn.decision is Decision.RECORD_AND_SAMPLE
    assert never.should_sample(None, TRACE_ID, "conveyor process").decision is Decision.DROP
    provider = TracerProvider(sampler=never)
    assert isinstance(provider.sampler, ConveyorSampler) and provider.sampler.ratio == 0.0
