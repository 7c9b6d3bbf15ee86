"""Reading what a Prometheus scrape endpoint serves: sample names, their labels and values.

`served_metric_names(text)` is what checks of alert rules and dashboards compare their queries
against: every name a PromQL query may use (counters with `_total`, histograms' `_bucket`,
`_sum` and `_count`, gauges as named)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

SCOPE_LABELS = ("otel_scope_name", "otel_scope_version", "otel_scope_schema_url")
"""Labels the OpenTelemetry exporter puts on every series, naming the meter."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One served series: its sample name, labels (scope labels left out) and value."""

    name: str
    labels: Mapping[str, str]
    value: float
    family: str
    """The metric family: the sample name without `_total`, `_bucket`, `_sum`, `_count`."""
    kind: str
    """`counter`, `gauge`, `histogram` or `info`."""
    help: str


def samples(text: str) -> Iterator[Sample]:
    """Every sample of a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k not in SCOPE_LABELS}
            yield Sample(s.name, labels, s.value, family.name, family.type, family.documentation)


def served_metric_names(text: str) -> set[str]:
    """The sample names a PromQL query can select in `text`."""
    return {s.name for s in samples(text)}


def value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples named `name` whose labels include `labels`; None when none is."""
    found = [
        s.value
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(found) if found else None
