"""docs/metrics.md's table of instruments is what the Prometheus exporter really serves: every
instrument of the relay and the consumer, with its kind, unit, attributes and Prometheus names."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from conveyor import telemetry
from tests.unit import docs_support as docs

DOC = docs.ROOT / "docs" / "metrics.md"

CONTRACT = {
    "relay": {
        "events_published_total": {"stream"},
        "events_publish_failed_total": {"stream"},
        "events_replayed_total": {"stream"},
        "redis_resets_total": set(),
        "batches_unreplicated_total": set(),
        "outbox_backlog": {"schema"},
        "outbox_oldest_age_seconds": {"schema"},
        "dependency_up": {"dependency"},
        "conveyor_up": {"role"},
        "conveyor_serving": {"role"},
    },
    "consumer": {
        "events_consumed_total": {"stream", "group"},
        "events_processed_total": {"stream", "group", "result"},
        "events_duplicate_total": {"stream", "group"},
        "events_retried_total": {"stream", "group"},
        "events_dlq_total": {"stream", "group", "reason"},
        "events_reprocessed_total": {"stream", "group"},
        "events_trimmed_total": {"stream"},
        "events_deleted_pending_total": {"stream", "group"},
        "consumer_groups_lost_total": {"stream", "group"},
        "event_processing_duration_seconds_bucket": {"stream", "group"},
        "event_end_to_end_latency_seconds_bucket": {"stream", "group"},
        "consumer_lag_seconds": {"stream", "group"},
        "consumer_lag_entries": {"stream", "group"},
        "consumer_pending": {"stream", "group"},
        "dependency_up": {"dependency"},
        "conveyor_up": {"role", "group"},
        "conveyor_serving": {"role", "group"},
    },
}
"""The Prometheus names and labels alert rules and dashboards are written against."""


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    kind: str
    unit: str
    attributes: frozenset[str]
    prometheus: frozenset[str]
    roles: frozenset[str]


def _codes(cell: str) -> frozenset[str]:
    return frozenset(re.findall(r"`([^`]+)`", cell))


def table() -> list[Row]:
    """The rows of the table whose header starts with `OTel name`."""
    lines = DOC.read_text("utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| OTel name |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        name, kind, unit, attributes, prometheus, roles, _meaning = (
            c.strip() for c in line.strip().strip("|").split("|")
        )
        rows.append(
            Row(
                name=name.strip("`"),
                kind=kind,
                unit=unit.strip("`"),
                attributes=_codes(attributes),
                prometheus=_codes(prometheus),
                roles=frozenset(r.strip() for r in roles.split(",")),
            )
        )
    return rows


def test_the_table_lists_every_instrument_each_process_serves() -> None:
    served = docs.served_metrics()
    listed = {(row.name, role) for row in table() for role in row.roles}
    assert listed == {(name, role) for role, found in served.items() for name in found}
    assert len(listed) == sum(len(row.roles) for row in table()), "a row is listed twice"


@pytest.mark.parametrize(
    "row", table(), ids=lambda row: f"{row.name}-{'+'.join(sorted(row.roles))}"
)
def test_each_row_says_what_the_exporter_serves(row: Row) -> None:
    for role in row.roles:
        served = docs.served_metrics()[role][row.name]
        assert (row.kind, row.unit) == (served.kind, served.unit)
        assert row.attributes == served.attributes == served.labels
        assert row.prometheus == served.prometheus


def test_the_served_names_and_labels_are_the_contract() -> None:
    for role, contract in CONTRACT.items():
        served = {n: i.labels for i in docs.served_metrics()[role].values() for n in i.prometheus}
        assert {n: served.get(n) for n in contract} == contract


def test_the_docs_may_name_prometheus_names_but_not_made_up_ones() -> None:
    text = "`outbox_oldest_age_seconds{schema}`, `events_dlq_total`, `consumer_lag_total`"
    problems = docs.metric_problems(text, "x.md", docs.known())
    assert [p.what for p in problems] == ["unknown metric consumer_lag_total"]


def test_latency_histograms_have_second_scale_buckets() -> None:
    assert telemetry.PROCESSING_BUCKETS[0] <= 0.001 and telemetry.PROCESSING_BUCKETS[-1] >= 5
    assert telemetry.LATENCY_BUCKETS[0] <= 0.005 and telemetry.LATENCY_BUCKETS[-1] >= 600
