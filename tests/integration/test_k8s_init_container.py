"""The Deployments' init container, run as the manifests give it: it waits, in one run, until the
migration Job has brought the schema to head, and then lets the pod start. A plain `conveyor
migrate check` exits 1 at once instead, and the kubelet restarts it with a backoff that grows to
five minutes (Init:CrashLoopBackOff): the new pods of an upgrade then start minutes after the Job.
Bad input (exit 2) is not waited on: it fails the pod at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from admin import migrations

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def _init_command(manifest: str) -> list[str]:
    deployment = next(d for d in yaml.safe_load_all((K8S / manifest).read_text()) if d)
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    return [*init.get("command", ["conveyor"]), *init["args"]]


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.Popen(
        command,
        env={**os.environ, "PATH": path, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("manifest", ["relay.yaml", "consumer.yaml"])
def test_init_container_waits_for_the_migration_then_exits_0(
    manifest: str, database_url: str, schema: str
) -> None:
    env = {"CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_SCHEMA": schema}
    proc = _start(_init_command(manifest), env)
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        # Two failed checks in one run: it waits rather than exiting for the kubelet to restart.
        while sum(f"{schema}: not migrated" in line for line in seen) < 2:
            line = proc.stdout.readline()
            assert line, f"exited {proc.wait()} instead of waiting:\n{''.join(seen)}"
            seen.append(line)
        migrations.upgrade(database_url, schema)  # the Job
        assert proc.wait(timeout=120) == 0, "".join(seen) + proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_init_container_fails_at_once_on_bad_input(database_url: str) -> None:
    env: dict[str, Any] = {"CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_SCHEMA": "Bad-Name"}
    proc = _start(_init_command("relay.yaml"), env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
