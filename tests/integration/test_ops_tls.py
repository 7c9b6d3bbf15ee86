"""TLS and mTLS through real processes: a `conveyor relay` serving over TLS, the `conveyor` CLI
as its client, certificates as the only credentials (mTLS) or beside a bearer token (TLS)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Case
from tests.integration.test_ops_plane import READ_TOKEN, port_of
from tests.pki import make_pki
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow

EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_DENIED = 1, 2, 3, 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_env(port: int, pki: Path, cert: str | None, ca: bool = True) -> dict[str, str]:
    """Environment for the CLI: target, the CA to verify the server, and a client certificate."""
    env = {"CONVEYOR_TARGET": f"127.0.0.1:{port}", "CONVEYOR_ADMIN_TOKEN": ""}
    if ca:
        env["CONVEYOR_ADMIN_TLS_CA"] = str(pki / "ca.crt")
    if cert is not None:
        env["CONVEYOR_ADMIN_TLS_CERT"] = str(pki / f"{cert}.crt")
        env["CONVEYOR_ADMIN_TLS_KEY"] = str(pki / f"{cert}.key")
    return env


async def ready(env: dict[str, str]) -> None:
    async def serving() -> bool:
        done = await asyncio.to_thread(run_conveyor, ["health", "--timeout", "2"], env)
        return done.returncode == 0

    await wait_until(serving, timeout=30, interval=0.3, what="the relay ready over TLS")


@pytest.fixture
def mtls_relay(case: Case, pki: Path) -> Iterator[int]:
    """A relay requiring client certificates; CN ops-console may write, others only read."""
    proc = start_conveyor(
        [
            "relay",
            "--tls-cert",
            str(pki / "server.crt"),
            "--tls-key",
            str(pki / "server.key"),
            "--tls-client-ca",
            str(pki / "ca.crt"),
            "--mtls-writer",
            "ops-console",
        ],
        case.env,
    )
    try:
        yield port_of(proc, [])
    finally:
        stop(proc)


async def test_mtls_certificates_authenticate_and_scope_cli_calls(
    mtls_relay: int, pki: Path, case: Case
) -> None:
    port = mtls_relay
    ops, grafana = client_env(port, pki, "ops"), client_env(port, pki, "grafana")
    await ready(ops)

    status = run_conveyor(["status", "--json"], grafana)
    assert status.returncode == 0, status.stderr
    assert any(
        c["name"] == f"conveyor.relay.{case.schema}"
        for c in json.loads(status.stdout)["components"]
    )

    resolve = ["dlq", "resolve", "--stream", "identity", "--id", "1-1", "--reason", "checked"]
    denied = run_conveyor(resolve, grafana)
    assert denied.returncode == EXIT_DENIED, denied.stderr
    assert "PERMISSION_DENIED" in denied.stderr and "cn:grafana" in denied.stderr
    allowed = run_conveyor(resolve, ops)  # past auth; there is no such dead letter
    assert allowed.returncode == EXIT_NOT_FOUND, allowed.stderr

    rows = await case.pg.fetch(
        "SELECT principal, outcome FROM conveyor.audit WHERE action LIKE '%ResolveDeadLetters' "
        "AND principal = 'cn:grafana' AND at > now() - interval '1 minute'"
    )
    assert rows and rows[0]["outcome"] == "permission_denied"

    for env, why in (
        (client_env(port, pki, None), "TLS without a client certificate"),
        (client_env(port, pki, None, ca=False), "plaintext"),
    ):
        refused = run_conveyor(["status", "--timeout", "3"], env)
        assert refused.returncode == EXIT_FAILURE, (why, refused.stderr)
        assert "UNAVAILABLE" in refused.stderr, (why, refused.stderr)


async def test_server_tls_with_a_bearer_token(case: Case, pki: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"reader read {hashlib.sha256(READ_TOKEN.encode()).hexdigest()}\n")
    proc = start_conveyor(
        [
            "relay",
            "--tls-cert",
            str(pki / "server.crt"),
            "--tls-key",
            str(pki / "server.key"),
            "--tokens-file",
            str(tokens),
        ],
        case.env,
    )
    try:
        port = port_of(proc, [])
        env = client_env(port, pki, None) | {"CONVEYOR_ADMIN_TOKEN": READ_TOKEN}
        await ready(env)
        status = run_conveyor(["status", "--json"], env)
        assert status.returncode == 0, status.stderr
        anonymous = run_conveyor(["status"], env | {"CONVEYOR_ADMIN_TOKEN": ""})
        assert anonymous.returncode == EXIT_DENIED, anonymous.stderr
        plaintext = run_conveyor(["status", "--timeout", "3"], env | {"CONVEYOR_ADMIN_TLS_CA": ""})
        assert plaintext.returncode == EXIT_FAILURE, plaintext.stderr
    finally:
        stop(proc)


def test_tls_settings_that_cannot_work_refuse_to_start(case: Case, pki: Path) -> None:
    cases = [
        (["--mtls-writer", "ops-console"], "needs --tls-client-ca"),
        (["--tls-cert", str(pki / "server.crt")], "needs both a certificate"),
        (
            ["--tls-cert", str(pki / "nope.crt"), "--tls-key", str(pki / "server.key")],
            "does not exist",
        ),
    ]
    for args, message in cases:
        done = run_conveyor(["relay", *args], case.env, timeout=30)
        assert done.returncode == EXIT_USAGE, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
