"""`conveyor relay` and `conveyor consume` processes exporting over OTLP/gRPC to a receiver: one
trace from `enqueue` through the relay's publish to each group's handler, the dead letter on the
failed process span, the reprocess as a new trace linked to it, counters matching the workload,
unsampled roots near the default ratio, and a collector that is down."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor import telemetry as t
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, enqueue_many
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.integration.otlp_receiver import Received, Receiver, exporting_env, receiving
from tests.integration.relay_support import drained
from tests.integration.test_ops_plane import port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

ROUTER = "tests.integration.effects_router:router"
GROUPS = ("g1", "g2")
EVENTS, REJECTED = 100, 3
_PRODUCER = InMemorySpanExporter()
_ATTACHED: list[TracerProvider] = []


@pytest.fixture
def producer_spans() -> Iterator[InMemorySpanExporter]:
    """This process traces as a producer would (every trace sampled), keeping its spans."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if provider not in _ATTACHED:
        provider.add_span_processor(SimpleSpanProcessor(_PRODUCER))
        _ATTACHED.append(provider)
    _PRODUCER.clear()
    yield _PRODUCER


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


def _consumer(case: Case, env: dict[str, str], group: str) -> subprocess.Popen[str]:
    args = ["consume", "--group", group, "--router", ROUTER, "--ledger-schema", case.schema]
    return start_conveyor(args, env)


async def _enqueue_in_a_trace(case: Case) -> tuple[int, list[str]]:
    """EVENTS sign-ups in one sampled request span, REJECTED of them of aggregate agg0."""
    events = [
        NewEvent(
            events_pb2.UserRegistered(user_id=f"u{i}"),
            "user",
            "agg0" if i < REJECTED else f"agg{i}",
            topic="identity",
        )
        for i in range(EVENTS)
    ]
    with trace.get_tracer("test").start_as_current_span("http request") as request:
        async with case.pg.transaction():
            ids = await enqueue_many(case.pg, events, schema=case.schema)
    return request.get_span_context().trace_id, [str(i) for i in ids]


async def test_one_trace_from_enqueue_through_the_relay_to_each_group_and_its_dead_letters(
    case: Case,
    receiver: Receiver,
    producer_spans: InMemorySpanExporter,
    catalog_cleanup: None,
    tmp_path: Path,
) -> None:
    refuse = tmp_path / "refuse"
    refuse.touch()
    await create_effects(case.pg, case.schema)
    env = case.env | exporting_env(receiver.port)
    env |= {"TEST_EFFECTS_SCHEMA": case.schema, "TEST_REJECT_FILE": str(refuse)}
    env["CONVEYOR_ALLOW_UNAUTHENTICATED"] = "true"
    procs = [_consumer(case, env, g) for g in GROUPS]
    try:
        target = f"127.0.0.1:{port_of(procs[0], [])}"
        procs.append(start_conveyor(["relay"], env))
        trace_id, ids = await _enqueue_in_a_trace(case)
        tid = f"{trace_id:032x}"
        enqueued = {
            s.attributes[t.ATTR_MESSAGE_ID]: s
            for s in producer_spans.get_finished_spans()
            if s.name == t.SPAN_ENQUEUE
        }
        assert set(enqueued) == set(ids)

        async def settled() -> bool:
            dead = await case.redis.xlen(wire.Keys("identity", case.prefix).dlq)
            applied = [len(await effect_counts(case.pg, case.schema, g)) for g in GROUPS]
            return dead == 2 * REJECTED and applied == [EVENTS - REJECTED] * 2

        await wait_until(settled, what="97 applied and 3 dead letters in each group")

        def processed() -> list[Received]:
            return [s for s in receiver.spans(t.SPAN_PROCESS) if s.trace_id == tid]

        async def traced() -> bool:
            return len(processed()) == 2 * EVENTS and len(_per_event(receiver, tid)) == EVENTS

        await wait_until(traced, what="every event's publish and process spans received")
        _check_event_traces(receiver, enqueued, tid)
        original = _check_dead_letters(processed(), ids[:REJECTED])

        async def counted() -> bool:
            return _counters(receiver) == {
                "published": EVENTS,
                **{f"{g} success": EVENTS - REJECTED for g in GROUPS},
                **{f"{g} dead letters": REJECTED for g in GROUPS},
            }

        await wait_until(counted, what=f"the counters received: {_counters(receiver)}")

        refuse.unlink()  # the cause is fixed: reprocess g1's first dead letter
        await _check_reprocess(case, receiver, target, env, original)
    finally:
        for proc in procs:
            stop(proc)


def _per_event(receiver: Receiver, tid: str) -> list[Received]:
    return [
        s
        for s in receiver.spans(t.SPAN_RELAY_PUBLISH)
        if s.trace_id == tid and t.ATTR_BATCH_MESSAGE_COUNT not in s.attributes
    ]


def _check_event_traces(receiver: Receiver, enqueued: dict[str, ReadableSpan], tid: str) -> None:
    """Each event: enqueue (producer) -> its publish (client, relay) -> process (consumer) in
    each group; the relay's batch spans link to the enqueue spans."""
    enqueue_ids = {f"{s.context.span_id:016x}": event_id for event_id, s in enqueued.items()}
    for span in enqueued.values():
        assert span.kind is trace.SpanKind.PRODUCER
        assert span.attributes[t.ATTR_MESSAGING_OPERATION_TYPE] == "create"
    publishes = _per_event(receiver, tid)
    assert {s.service for s in publishes} == {"conveyor-relay"}
    assert {s.kind for s in publishes} == {"client"}
    assert {enqueue_ids[s.parent_id] for s in publishes} == set(enqueued)
    assert all(enqueue_ids[s.parent_id] == s.attributes[t.ATTR_MESSAGE_ID] for s in publishes)
    for span in receiver.spans(t.SPAN_PROCESS):
        if span.trace_id == tid:
            assert span.kind == "consumer"
            assert enqueue_ids[span.parent_id] == span.attributes[t.ATTR_MESSAGE_ID]
    by_group = {
        g: {
            s.attributes[t.ATTR_MESSAGE_ID]
            for s in receiver.spans(t.SPAN_PROCESS)
            if s.trace_id == tid and s.attributes[t.ATTR_CONSUMER_GROUP] == g
        }
        for g in GROUPS
    }
    assert by_group == {g: set(enqueued) for g in GROUPS}
    batches = [
        s
        for s in receiver.spans(t.SPAN_RELAY_PUBLISH)
        if t.ATTR_BATCH_MESSAGE_COUNT in s.attributes
    ]
    linked = {span_id for b in batches for trace_id, span_id in b.links if trace_id == tid}
    assert linked == set(enqueue_ids), "the batch spans link every sampled event"
    assert all(b.parent_id == "" and b.trace_id != tid for b in batches)


def _check_dead_letters(processed: list[Received], rejected: list[str]) -> Received:
    """The rejected events' process spans failed and carry the dead-letter event; returns g1's
    for the first of them."""
    failed = [s for s in processed if s.error]
    assert {
        (s.attributes[t.ATTR_CONSUMER_GROUP], s.attributes[t.ATTR_MESSAGE_ID]) for s in failed
    } == {(g, i) for g in GROUPS for i in rejected}
    for span in failed:
        (event,) = [attrs for name, attrs in span.events if name == t.EVENT_DEAD_LETTER]
        assert event[t.ATTR_ERROR_TYPE] == "Reject"
        assert event[t.ATTR_DEAD_LETTER_REASON] == "rejected"
        assert span.attributes[t.ATTR_ERROR_TYPE] == "Reject"
    return next(
        s
        for s in failed
        if s.attributes[t.ATTR_CONSUMER_GROUP] == "g1"
        and s.attributes[t.ATTR_MESSAGE_ID] == rejected[0]
    )


def _counters(receiver: Receiver) -> dict[str, float]:
    found = {"published": receiver.metric(t.EVENTS_PUBLISHED)}
    for g in GROUPS:
        found[f"{g} success"] = receiver.metric(t.EVENTS_PROCESSED, group=g, result="success")
        found[f"{g} dead letters"] = receiver.metric(t.EVENTS_DLQ, group=g)
    return found


async def _check_reprocess(
    case: Case, receiver: Receiver, target: str, env: dict[str, str], original: Received
) -> None:
    dlq = wire.Keys("identity", case.prefix).dlq
    entry = next(
        entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        for entry_id, fields in await case.redis.xrange(dlq)
        if fields[wire.DL_GROUP] == b"g1"
        and fields[wire.F_EVENT_ID].decode() == original.attributes[t.ATTR_MESSAGE_ID]
    )
    done = run_conveyor(
        ["dlq", "reprocess", "--stream", "identity", "--id", entry, "--target", target], env
    )
    assert done.returncode == 0, done.stdout + done.stderr

    def again() -> list[Received]:
        return [
            s
            for s in receiver.spans(t.SPAN_PROCESS)
            if s.attributes.get(t.ATTR_DEAD_LETTER_ENTRY) == entry
        ]

    async def received() -> bool:
        return bool(again())

    await wait_until(received, what="the reprocess's process span")
    (span,) = again()
    assert span.trace_id != original.trace_id and span.parent_id == "", "a new trace"
    assert span.links == [(original.trace_id, original.span_id)], "linked to the failed span"
    assert not span.error and span.attributes[t.ATTR_CONSUMER_GROUP] == "g1"


async def test_events_enqueued_outside_a_trace_are_sampled_near_the_default_ratio(
    case: Case, receiver: Receiver, catalog_cleanup: None
) -> None:
    n = 3000
    await create_effects(case.pg, case.schema)
    env = case.env | exporting_env(receiver.port) | {"TEST_EFFECTS_SCHEMA": case.schema}
    proc = _consumer(case, env, "g")
    try:
        await publish(case.redis, case.prefix, n, aggregates=1000)  # no traceparent at all

        async def applied() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == n

        await wait_until(applied, timeout=60, what=f"{n} applied")
    finally:
        out = stop(proc)  # flushes what is left at exit
    roots = [s for s in receiver.spans(t.SPAN_PROCESS) if s.parent_id == ""]
    # 1 % of 3000: 30 expected, standard deviation 5.4; the bounds are 3.7 deviations out.
    assert 10 <= len(roots) <= 50, (len(roots), out[-2000:])
    assert "ParentBased" in out and "LinkedOrRatio{0.01}" in out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens


async def test_a_collector_that_is_down_costs_one_log_line_and_never_holds_the_relay(
    case: Case, producer_spans: InMemorySpanExporter
) -> None:
    env = case.env | exporting_env(_closed_port()) | {"OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    proc = start_conveyor(["relay"], env)
    try:
        for _ in range(5):  # batches of sampled events: per-event spans to export, and drop
            await _enqueue_in_a_trace(case)
            await wait_until(lambda: drained(case.pg, case.schema), what="published")
        await asyncio.sleep(3)  # exports keep failing meanwhile: a line each, were it not held
        assert await case.redis.xlen(wire.Keys("identity", case.prefix).events) == 5 * EVENTS
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out[-3000:]
    lines = [line for line in out.splitlines() if "opentelemetry" in line or "export" in line]
    failing = [line for line in lines if "telemetry export failing" in line]
    assert len(failing) == 1, "\n".join(lines)
    assert "0 held back" in failing[0]
    assert len(lines) <= 3, "\n".join(lines)  # + the start's "exporting ..." and the exit's


def test_a_bad_sample_ratio_stops_the_start_naming_the_variable(case: Case) -> None:
    done = run_conveyor(["relay"], case.env | {"CONVEYOR_TRACE_SAMPLE_RATIO": "5%"}, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "conveyor: error: invalid CONVEYOR_TRACE_SAMPLE_RATIO='5%': use a number from 0 to 1"
        in (done.stderr)
    )


def test_relay_replay_refuses_a_bad_ratio_as_a_usage_error_like_the_relay(case: Case) -> None:
    env = case.env | {"CONVEYOR_TRACE_SAMPLE_RATIO": "2"}
    relay = run_conveyor(["relay", "--schema", case.schema], env, timeout=60)
    assert relay.returncode == 2, relay.stdout + relay.stderr
    replay = run_conveyor(["relay", "replay", "--since", "1h", "--dry-run"], env)
    output = replay.stdout + replay.stderr
    assert "CONVEYOR_TRACE_SAMPLE_RATIO" in output
    assert "Traceback" not in output, output[-1500:]
    assert replay.returncode == 2, output[-1500:]
