"""Entries over max_attempts that need no dead letter (consumers/poison_queue.py
`over_attempts`): what the consumer's counters say of them, without servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from consumers import poison_queue
from consumers.deliveries import DeadLetterMark, Entry
from consumers.metrics import ConsumerMetrics
from consumers.poison_queue import PoisonQueue
from conveyor import telemetry as t
from conveyor import wire

KEYS = wire.Keys("identity", "conveyor")


class _Streams:
    """TopicStreams as far as `over_attempts` uses it when nothing is moved."""

    keys = KEYS
    retry = KEYS.retry("g")

    async def ack(self, entries: list[Entry]) -> None:
        pass

    async def dead_letter(self, entry: Entry, fields: Any) -> str:
        raise AssertionError(f"{entry.entry_id} moved; it was applied already")


@asynccontextmanager
async def _applied_elsewhere(mark: DeadLetterMark) -> AsyncIterator[bool]:
    """A mark that finds the event applied by a member that was slow: no move needed."""
    yield True


def _counts(reader: InMemoryMetricReader) -> dict[tuple[str, str], float]:
    """(instrument, result attribute or '') -> value."""
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[tuple[str, str], float] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    key = (metric.name, str(point.attributes.get(t.ATTR_RESULT, "")))
                    out[key] = out.get(key, 0) + point.value  # type: ignore[union-attr]
    return out


@pytest.fixture(name="standing_none")
def fixture_standing_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """No earlier dead letter of any event stands."""

    async def standing(*_args: Any) -> None:
        return None

    monkeypatch.setattr(poison_queue.dead_letters, "standing", standing)


@pytest.mark.usefixtures("standing_none")
async def test_entries_applied_meanwhile_count_as_duplicates_as_the_worker_counts_them() -> None:
    """One event delivered twice in one batch over the cap, applied meanwhile by a slow member:
    both entries are acknowledged, and each counts once in events_duplicate and in
    events_processed{result="duplicate"}, as a duplicate the worker acknowledges does."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = ConsumerMetrics(provider.get_meter(t.METER_CONSUMER))
    queue = PoisonQueue(
        streams=_Streams(),  # type: ignore[arg-type]
        catalog=SimpleNamespace(),  # type: ignore[arg-type]
        marking=_applied_elsewhere,
        settings=SimpleNamespace(group="g", consumer="c", max_attempts=2),  # type: ignore[arg-type]
        metrics=metrics,
    )
    fields = {wire.F_EVENT_ID: str(uuid.uuid4()).encode(), wire.F_EVENT_TYPE: b"t.v1.T"}
    first = Entry(KEYS.events, "1-0", dict(fields), attempt=3)
    again = Entry(KEYS.events, "2-0", dict(fields), attempt=3)

    acknowledged = await queue.over_attempts([first, again])

    assert [e.entry_id for e in acknowledged] == ["1-0", "2-0"]
    counts = _counts(reader)
    provider.shutdown()
    assert counts.get((t.EVENTS_DUPLICATE, ""), 0) == 2
    assert counts.get((t.EVENTS_PROCESSED, "duplicate"), 0) == 2
    assert counts.get((t.EVENTS_PROCESSED, "dead_letter"), 0) == 0
