"""The monitoring kit (deploy/observability) works on day one: promtool accepts the Prometheus
config and the alert rules, every alert fires on sample series and stays silent on healthy ones,
every alert links to its runbook section, the dashboard loads and queries only metrics Conveyor
serves, and the collector's pipelines name only components it defines."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import monitoring_kit as kit

SEED_ALERTS = {
    "ConveyorConsumerLagHigh": "consumer_lag_seconds",
    "ConveyorDeadLetterAdded": "events_dlq_total",
    "ConveyorProcessingSuccessRateLow": "events_processed_total",
    "ConveyorRedisUnreachable": "dependency_up",
    "ConveyorOutboxBacklogHigh": "outbox_backlog",
}
"""The predecessor's alerts, kept, and the metric each must read."""


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: `apt-get install prometheus` provides it "
            "(`bash .ci/install` does so when run as root)",
            pytrace=False,
        )
    return path


def _run(promtool: str, *args: str, cwd: Path = kit.KIT) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_accepts_the_alert_rules(promtool: str) -> None:
    out = _run(promtool, "check", "rules", kit.RULES.name)
    assert f"SUCCESS: {len(kit.alert_rules())} rules found" in out


def test_promtool_accepts_the_prometheus_config_and_its_rule_files(promtool: str) -> None:
    out = _run(promtool, "check", "config", kit.PROMETHEUS.name)
    assert "WARNING" not in out, out
    assert kit.load_yaml(kit.PROMETHEUS)["rule_files"] == [kit.RULES.name]


def test_every_alert_fires_on_its_sample_series_and_stays_silent_on_healthy_ones(
    promtool: str,
) -> None:
    _run(promtool, "test", "rules", kit.RULE_TESTS.name)
    fired: set[str] = set()
    silent: set[str] = set()
    for case in kit.load_yaml(kit.RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in kit.alert_rules()}
    assert alerts == fired, f"never shown firing: {alerts - fired}"
    assert alerts == silent, f"never shown silent: {alerts - silent}"


def test_the_seed_alerts_are_kept_with_their_thresholds() -> None:
    rules = {rule["alert"]: rule for rule in kit.alert_rules()}
    for alert, metric in SEED_ALERTS.items():
        assert metric in kit.promql_metric_names(rules[alert]["expr"]), alert
    assert re.search(r"\)\s*>\s*60$", rules["ConveyorConsumerLagHigh"]["expr"].strip())
    assert "increase(events_dlq_total[10m])" in rules["ConveyorDeadLetterAdded"]["expr"]
    assert "< 0.95" in rules["ConveyorProcessingSuccessRateLow"]["expr"]
    assert 'dependency_up{dependency="redis"} == 0' in rules["ConveyorRedisUnreachable"]["expr"]
    assert rules["ConveyorOutboxBacklogHigh"]["expr"].strip().endswith("> 100")
    assert {
        "ConveyorPostgresUnreachable",
        "ConveyorOutboxOldestAgeHigh",
        "ConveyorConsumerPendingGrowing",
        "ConveyorRelayAbsent",
        "ConveyorConsumerGroupAbsent",
        "ConveyorConsumerGroupLost",
        "ConveyorConsumerGroupNotServing",
    } <= rules.keys()


def test_every_alert_has_a_severity_a_text_and_a_runbook_section() -> None:
    anchors = kit.runbook_anchors()
    for rule in kit.alert_rules():
        name, notes = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook_url"} <= notes.keys(), name
        assert notes["runbook_url"] == f"{kit.RUNBOOK_URL}{name.lower()}", name
        assert name.lower() in anchors, f"docs/operations.md has no heading `{name}`"
        assert "job" not in re.findall(r"\w+", rule["expr"]), f"{name} relies on `job`"


def test_the_runbook_anchors_are_the_ones_github_makes() -> None:
    text = (
        "# Operations runbook\n```\n# not a heading\n```\n"
        "### ConveyorRelayAbsent\n## Dead letters: triage, `reprocess`\n"
    )
    assert kit.runbook_anchors(text) == {
        "operations-runbook",
        "conveyorrelayabsent",
        "dead-letters-triage-reprocess",
    }


def test_the_dashboard_loads_and_every_panel_queries_through_the_datasource_variable() -> None:
    board = kit.dashboard()
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"stream", "group"} <= variables.keys()
    panels = list(kit.dashboard_panels(board))
    rows = [p for p in board["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in [*rows, *panels]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_dashboard_shows_what_an_operator_looks_at() -> None:
    used = set().union(*(kit.promql_metric_names(e) for e in kit.dashboard_exprs()))
    assert {
        "events_published_total",
        "events_processed_total",
        "consumer_lag_seconds",
        "consumer_lag_entries",
        "outbox_backlog",
        "outbox_oldest_age_seconds",
        "events_dlq_total",
        "event_processing_duration_seconds_bucket",
        "event_end_to_end_latency_seconds_bucket",
        "dependency_up",
        "conveyor_up",
    } <= used
    quantiles = [e for e in kit.dashboard_exprs() if e.startswith("histogram_quantile(")]
    assert all("_bucket{" in e and "by (le" in e for e in quantiles) and len(quantiles) >= 6
    dead_letters = [e for e in kit.dashboard_exprs() if "events_dlq_total" in e]
    assert any("group, reason" in e for e in dead_letters)


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    exprs = [*kit.dashboard_exprs(), *kit.variable_selectors()]
    rules = [
        {"record": f"dashboard:query{i}", "expr": kit.as_promql(e)} for i, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run(promtool, "check", "rules", str(path), cwd=tmp_path)


def test_every_metric_the_rules_and_the_dashboard_name_is_served() -> None:
    names = kit.kit_metric_names()
    assert set(SEED_ALERTS.values()) <= names
    assert names <= kit.CONTRACT, f"not served by Conveyor: {sorted(names - kit.CONTRACT)}"
    assert not any("__name__" in e for e in [*kit.rule_exprs(), *kit.dashboard_exprs()])


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("max by (stream, group) (consumer_lag_seconds) > 60", {"consumer_lag_seconds"}),
        (
            'sum by (le, group) (rate(x_bucket{group=~"$group", le!="+Inf"}[$__rate_interval]))',
            {"x_bucket"},
        ),
        ("a / on (stream) group_left (reason) b > bool 1e3 unless c offset 10m", {"a", "b", "c"}),
        ("deriv(max by (s) (pending)[15m:1m]) > 0 and on () count(up offset 1h30m) > 0", None),
        ('absent(conveyor_up{role="relay"} == 1) or vector(0) * Inf', {"conveyor_up"}),
        ('label_replace(m, "dst", "$1", "src", "(sum|rate)")', {"m"}),
        ("topk(5, sum without (instance) (rate(requests_total[5m])))", {"requests_total"}),
    ],
)
def test_the_metric_name_extractor_finds_selectors_only(expr: str, names: Any) -> None:
    expected = {"pending", "up"} if names is None else names
    assert kit.promql_metric_names(expr) == expected


def _component_names(section: dict[str, Any] | None) -> set[str]:
    return set(section or {})


def test_the_collector_pipelines_name_only_defined_components_on_the_documented_ports() -> None:
    config = kit.load_yaml(kit.COLLECTOR)
    service = config["service"]
    assert set(service["extensions"]) <= _component_names(config["extensions"])
    assert {"metrics", "traces"} <= service["pipelines"].keys()
    for name, pipeline in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            assert pipeline[kind], f"pipeline {name} has no {kind}"
            assert set(pipeline[kind]) <= _component_names(config[kind]), (name, kind)
        assert pipeline["processors"][0] == "memory_limiter", name
        assert "batch" in pipeline["processors"], name
    otlp = config["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"].endswith(":4317")
    assert otlp["http"]["endpoint"].endswith(":4318")
    assert "health_check" in config["extensions"]
    prometheus = config["exporters"]["prometheus"]
    port = prometheus["endpoint"].rsplit(":", 1)[1]
    scraped = kit.load_yaml(kit.PROMETHEUS)["scrape_configs"]
    collector_job = next(job for job in scraped if job["job_name"] == "otel-collector")
    assert collector_job["static_configs"][0]["targets"] == [f"otel-collector:{port}"]
    assert collector_job["honor_labels"] is True
    assert re.fullmatch(r"[1-4]m", prometheus["metric_expiration"]), "between 1 and 5 minutes"
    traces = [e for e in service["pipelines"]["traces"]["exporters"] if e.startswith("otlp")]
    assert traces and all("${env:" in config["exporters"][e]["endpoint"] for e in traces)


def test_the_compose_file_mounts_files_of_the_kit_where_they_are_read() -> None:
    compose = kit.load_yaml(kit.COMPOSE)["services"]
    for name, service in compose.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (kit.KIT / source).exists(), f"{name} mounts {source}, which does not exist"
    provider = kit.load_yaml(kit.KIT / "grafana" / "provisioning" / "dashboards.yml")
    folder = provider["providers"][0]["options"]["path"]
    assert any(
        v.endswith(f"{folder}/{kit.DASHBOARD.name}:ro") for v in compose["grafana"]["volumes"]
    )
    sources = kit.load_yaml(kit.KIT / "grafana" / "provisioning" / "datasources.yml")
    assert sources["datasources"][0]["type"] == "prometheus"
    assert "--config=/etc/otelcol/otel-collector.yaml" in compose["otel-collector"]["command"]


def test_the_runbook_starts_with_the_daily_checks() -> None:
    text = kit.RUNBOOK.read_text(encoding="utf-8")
    daily = text.split("\n## ")[1]
    assert daily.startswith("Daily checks")
    for command in ("conveyor status --all", "conveyor dlq report"):
        assert command in daily, command
