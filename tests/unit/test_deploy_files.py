"""The deployment files are valid offline: hadolint accepts the Dockerfile, the compose file
matches the compose specification's schema, every Kubernetes object matches the API schemas of
the Kubernetes version it claims (kubernetes-validate ships them), and the KEDA ScaledObject
matches its CRD's schema kept in deploy/k8s/schemas. Each check also refuses a broken copy, so a
validator that silently accepts everything fails here."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from admin.cli import demo
from admin.ops import observability
from conveyor import wire

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s"
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject-v1alpha1.json"
KUBERNETES = "1.30.0"
"""The oldest Kubernetes the manifests are checked against (native gRPC probes: 1.27+)."""


def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hadolint"), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), "-"],
        input=dockerfile.read_text(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _objects(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _all_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [o for name in kustomization["resources"] for o in _objects(name)]


def _deployment(name: str) -> dict[str, Any]:
    found = [
        o for o in _all_objects() if o["kind"] == "Deployment" and o["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"one Deployment {name} expected"
    return found[0]


def test_dockerfile_passes_hadolint() -> None:
    result = _hadolint(ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_a_shell_form_entrypoint(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    text = (ROOT / "Dockerfile").read_text()
    broken.write_text(text.replace('ENTRYPOINT ["conveyor"]', "ENTRYPOINT conveyor"))
    result = _hadolint(broken)
    assert result.returncode != 0 and "DL3025" in result.stdout, result.stdout


def test_image_runs_as_a_numeric_non_root_user_with_conveyor_as_pid_1() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim", text, re.M), "default base image"
    final = text.rsplit("\nFROM ", 1)[1]
    uid = re.search(r"^ARG UID=(\d+)$", final, re.M)
    assert uid and int(uid.group(1)) > 0
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", final, re.M)
    assert 'ENTRYPOINT ["conveyor"]' in final  # exec form: signals reach conveyor itself
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*conveyor health", final, re.M)
    # No credentials in the image: no secret-looking variable is set at build time.
    assert not re.search(r"^(ENV|ARG) .*(PASSWORD|TOKEN|SECRET)", text, re.M | re.I)


def test_build_context_holds_only_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything is left out but what is named
    copied = re.findall(r"^COPY (?!--from)(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert {c.rstrip("/") for c in copied} <= allowed


def test_compose_file_matches_the_compose_specification() -> None:
    result = _check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_refuses_an_unknown_service_key(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("  relay:\n", "  relay:\n    restrat: always\n"))
    result = _check_compose(broken)
    assert result.returncode != 0, result.stdout


def test_compose_stack_runs_the_pipeline_and_the_monitoring_kit() -> None:
    stack = yaml.safe_load(COMPOSE.read_text())
    services = stack["services"]
    assert {"postgres", "redis", "migrate", "relay", "producer"} <= services.keys()
    assert {"otel-collector", "prometheus", "grafana"} <= services.keys()
    assert "--appendonly" in services["redis"]["command"]
    assert services["migrate"]["command"][:2] == ["migrate", "up"]
    groups = {
        s["command"][s["command"].index("--group") + 1]
        for s in services.values()
        if s.get("command", [None])[:1] == ["consume"]
    }
    assert len(groups) == 2, groups
    for name in ("relay", "producer", *(n for n in services if n in {"mailer", "audit"})):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    addrs = [
        s["environment"]["CONVEYOR_GRPC_ADDR"]
        for s in services.values()
        if "CONVEYOR_GRPC_ADDR" in s.get("environment", {})
    ]
    assert len(addrs) == len(set(addrs)) == 3


def test_compose_audit_group_handles_every_type_the_demo_producer_writes() -> None:
    spec = importlib.util.spec_from_file_location("demo_app", COMPOSE.parent / "demo_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    produced = {e.message.DESCRIPTOR.full_name for e in demo.demo_events("t", 30)}
    assert (
        produced
        == set(module.router.routes_for(demo.TOPIC))
        == set(demo.router.routes_for(demo.TOPIC))
    )


def test_compose_mounts_the_observability_kit_files_that_exist() -> None:
    stack = yaml.safe_load(COMPOSE.read_text())
    for name, service in stack["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"


def test_every_kubernetes_object_matches_the_api_schema() -> None:
    checked = 0
    for obj in _all_objects():
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        checked += 1
    assert checked >= 9


def test_kubernetes_validation_refuses_a_probe_on_a_named_port() -> None:
    relay = _deployment("conveyor-relay")
    relay["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(relay, KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("name", ["conveyor-relay", "conveyor-consumer-mailer"])
def test_deployments_probe_grpc_health_and_set_requests_and_limits(name: str) -> None:
    config = next(o for o in _all_objects() if o["kind"] == "ConfigMap")["data"]
    port = int(config["CONVEYOR_GRPC_ADDR"].rsplit(":", 1)[1])
    container = _deployment(name)["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["grpc"] == {"port": port, "service": "conveyor.liveness"}
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": ""}
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]
    # The bench's peak RSS is 101-115 MiB (docs/performance.md): the limit leaves room above it.
    assert int(resources["limits"]["memory"].removesuffix("Mi")) >= 256


def test_disruption_budgets_select_the_deployments() -> None:
    objects = _all_objects()
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    labels = [
        o["spec"]["template"]["metadata"]["labels"] for o in objects if o["kind"] == "Deployment"
    ]
    assert len(budgets) == len(labels) == 2
    for budget in budgets:
        wanted = budget["spec"]["selector"]["matchLabels"]
        assert sum(wanted.items() <= lab.items() for lab in labels) == 1, budget["metadata"]


def test_keda_scaledobject_matches_its_crd_schema_and_scales_the_group_stream() -> None:
    schema = json.loads(KEDA_SCHEMA.read_text())
    (scaled,) = _objects("keda-scaledobject.yaml")
    jsonschema.Draft202012Validator(schema).validate(scaled)
    consumer = _deployment("conveyor-consumer-mailer")
    args = consumer["spec"]["template"]["spec"]["containers"][0]["args"]
    config = next(o for o in _all_objects() if o["kind"] == "ConfigMap")["data"]
    (trigger,) = scaled["spec"]["triggers"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == consumer["metadata"]["name"]
    assert trigger["type"] == "redis-streams"
    topic = args[args.index("--topic") + 1]
    assert trigger["metadata"]["stream"] == wire.Keys(topic, config["CONVEYOR_KEY_PREFIX"]).events
    assert trigger["metadata"]["consumerGroup"] == args[args.index("--group") + 1]


def test_keda_schema_refuses_a_number_in_trigger_metadata() -> None:
    schema = json.loads(KEDA_SCHEMA.read_text())
    (scaled,) = _objects("keda-scaledobject.yaml")
    scaled["spec"]["triggers"][0]["metadata"]["lagCount"] = 1000
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(scaled)


def test_a_deployment_keda_scales_leaves_its_replica_count_to_keda() -> None:
    # With `replicas` in the manifest, every `kubectl apply -k` (each upgrade step of
    # docs/deployment.md) sets the group back to that count, dropping the members KEDA added
    # for the lag until its next poll (Kubernetes' advice for autoscaled Deployments).
    (scaled,) = _objects("keda-scaledobject.yaml")
    target = _deployment(scaled["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in target["spec"], target["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] >= 2  # the PodDisruptionBudget keeps one of them


@pytest.mark.parametrize("name", ["conveyor-relay", "conveyor-consumer-mailer"])
def test_deployments_hand_their_metrics_to_prometheus_one_way_only(name: str) -> None:
    # Scraped from the pod (--metrics-addr and the prometheus.io annotations) and also exported
    # over OTLP to the collector Prometheus scrapes, every counter would be counted twice
    # (deploy/observability/prometheus.yml, docs/deployment.md).
    config = next(o for o in _all_objects() if o["kind"] == "ConfigMap")["data"]
    pod = _deployment(name)["spec"]["template"]
    scraped = (
        pod["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true"
        and "CONVEYOR_METRICS_ADDR" in config
    )
    assert scraped != observability.exporting(config, "metrics")
    assert observability.exporting(config, "traces")  # traces still reach the collector


def test_every_kubectl_command_shown_names_the_namespace() -> None:
    # The kustomization puts everything in namespace `conveyor`: `kubectl delete job
    # conveyor-migrate` without it deletes nothing in `default`, the Job of the new image then
    # fails to apply (its template is immutable), and no migration runs.
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    texts = [ROOT / "docs" / "deployment.md", *sorted(K8S.glob("*.yaml"))]
    commands = [
        (path.name, " ".join(found.split()))
        for path in texts
        for found in re.findall(
            r"kubectl [^`\n]*(?:\n[^`\n]*)?(?=`)|kubectl [^`\n]*", path.read_text()
        )
    ]
    assert commands
    unscoped = [
        (name, command)
        for name, command in commands
        if not command.startswith("kubectl apply -k") and f"-n {namespace}" not in command
    ]
    assert not unscoped
