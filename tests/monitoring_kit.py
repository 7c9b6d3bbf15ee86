"""The monitoring kit of deploy/observability as tests read it: the Prometheus names Conveyor
serves (the contract the kit is written against, in one place), the PromQL of the alert rules and
the Grafana dashboard, and the metric names that PromQL uses (`kit_metric_names`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "deploy" / "observability"
RULES = KIT / "conveyor-alerts.yml"
RULE_TESTS = KIT / "conveyor-alerts.test.yml"
PROMETHEUS = KIT / "prometheus.yml"
COLLECTOR = KIT / "otel-collector.yaml"
COMPOSE = KIT / "compose.yaml"
DASHBOARD = KIT / "grafana" / "conveyor-dashboard.json"
RUNBOOK = ROOT / "docs" / "operations.md"
RUNBOOK_URL = "docs/operations.md#"
"""How every alert's runbook_url starts: the runbook's path from the repository root."""

HISTOGRAMS = frozenset({"event_processing_duration_seconds", "event_end_to_end_latency_seconds"})
CONTRACT = frozenset(
    {
        # relay
        "events_published_total",
        "events_publish_failed_total",
        "events_replayed_total",
        "redis_resets_total",
        "outbox_backlog",
        "outbox_oldest_age_seconds",
        # consumer
        "events_consumed_total",
        "events_processed_total",
        "events_duplicate_total",
        "events_retried_total",
        "events_dlq_total",
        "events_reprocessed_total",
        "events_trimmed_total",
        "events_deleted_pending_total",
        "consumer_groups_lost_total",
        "consumer_lag_seconds",
        "consumer_lag_entries",
        "consumer_pending",
        # every process
        "dependency_up",
        "conveyor_up",
        "conveyor_serving",
        *(f"{name}_{part}" for name in HISTOGRAMS for part in ("bucket", "sum", "count")),
    }
)
"""The sample names Conveyor's processes serve to Prometheus (histograms as their `_bucket`,
`_sum` and `_count` series), which is all the kit may query."""


def load_yaml(path: Path) -> Any:
    """One YAML file of the kit."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of conveyor-alerts.yml."""
    groups = load_yaml(RULES)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_panels(board: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, those inside collapsed rows included; rows themselves not."""
    for panel in (board or dashboard())["panels"]:
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_exprs(board: dict[str, Any] | None = None) -> list[str]:
    """The PromQL of every panel query, with Grafana's variables still in it."""
    return [t["expr"] for p in dashboard_panels(board) for t in p.get("targets", [])]


_LABEL_VALUES = re.compile(r"label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)


def variable_selectors(board: dict[str, Any] | None = None) -> list[str]:
    """The series selectors of the dashboard's query variables (`label_values(SELECTOR, label)`)."""
    found = []
    for var in (board or dashboard())["templating"]["list"]:
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        if match := _LABEL_VALUES.match(query.strip()):
            found.append(match.group(1))
    return found


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def as_promql(expr: str) -> str:
    """A dashboard query as Prometheus would receive it: interval variables become durations,
    the others (inside label matchers) `.*`."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<variable>\$\{?\w+\}?)
    | (?P<number>(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
                 (?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)   # 0.95, 1e3, 5m, 1h30m
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<punct>[(){}\[\],])
    | (?P<other>\S)
    """,
    re.VERBOSE,
)
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset(
    {
        *_LABEL_LISTS,
        *("and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"),
        *("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"),
        *("bottomk", "topk", "quantile", "limitk", "limit_ratio"),
    }
)
"""PromQL words that are not metric names: operators, modifiers, aggregations (which may stand
before `by (...)` rather than `(`). Function names are recognised by the `(` after them."""


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers standing as a selector (bare, or
    before `{`, `[`), not label names (inside `{}` or `by (...)`-like lists), function or
    aggregation names, keywords, durations, strings or Grafana variables."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names: set[str] = set()
    braces = brackets = 0
    label_list = 0  # > 0: inside `by (...)` and the like, counting parentheses
    for at, (kind, text) in enumerate(tokens):
        after = tokens[at + 1][1] if at + 1 < len(tokens) else ""
        if label_list:
            label_list += {"(": 1, ")": -1}.get(text, 0)
            if text == ")" and label_list == 1:
                label_list = 0
            continue
        if kind == "punct":
            braces += {"{": 1, "}": -1}.get(text, 0)
            brackets += {"[": 1, "]": -1}.get(text, 0)
            continue
        if kind != "ident" or braces or brackets:
            continue
        word = text.lower()
        if word in _LABEL_LISTS and after == "(":
            label_list = 1
        elif word not in _KEYWORDS and after != "(":
            names.add(text)
    return names


def rule_exprs() -> list[str]:
    """The PromQL of every rule in conveyor-alerts.yml."""
    groups = load_yaml(RULES)["groups"]
    return [str(rule["expr"]) for group in groups for rule in group["rules"]]


def kit_metric_names() -> set[str]:
    """Every metric name the alert rules and the dashboard (panels and variables) query, as the
    sample names Prometheus stores (a histogram's `_bucket` series, say). After a workload each
    must be among the names a process's scrape endpoint serves."""
    exprs = [*rule_exprs(), *dashboard_exprs(), *variable_selectors()]
    return set().union(*(promql_metric_names(as_promql(e)) for e in exprs))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation but `_` and `-`
    dropped, spaces made `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors(text: str | None = None) -> set[str]:
    """The anchors of every heading of docs/operations.md (code blocks skipped)."""
    text = RUNBOOK.read_text(encoding="utf-8") if text is None else text
    anchors, fenced = set(), False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            anchors.add(github_anchor(match.group(1)))
    return anchors
