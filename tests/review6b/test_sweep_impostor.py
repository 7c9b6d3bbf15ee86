"""`conveyor status --all` (admin/cli/sweep.py) against a real gRPC server: a relay that died an
hour ago left its row; its port is now answered by some other gRPC service (any service with the
standard health service, e.g. another team's)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from admin.cli import sweep
from admin.cli.client import EXIT_OK, Connection
from conveyor.v1 import admin_pb2


@pytest.fixture(name="other_service")
def fixture_other_service() -> Iterator[int]:
    """A gRPC server that is not Conveyor: grpc.health.v1 only, SERVING; yields its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def test_a_dead_relay_whose_port_another_service_took_is_not_reported_serving(
    other_service: int,
) -> None:
    """The row's heartbeat is an hour old (absent); its address answers health SERVING but
    GetStatus UNIMPLEMENTED, so `_impostor` cannot compare pids and `judge` takes the other
    service's health for the relay's: the sweep prints SERVING and exits 0 for a relay that died
    an hour ago — the daily sweep says all is well with no relay running. The module's own rule
    says ABSENT ("its heartbeat is older than the limit and its address ... is answered by
    another process")."""
    address = f"127.0.0.1:{other_service}"
    dead = admin_pb2.RegisteredProcess(
        role=admin_pb2.PROCESS_ROLE_RELAY,
        name="relay-host-4242",
        host="relay-host",
        pid=4242,
        grpc_addr=address,
        heartbeat_age_seconds=3_600.0,
        absent=True,
    )
    conn = Connection(target=address, token=None, timeout=5.0)

    findings = sweep.sweep(conn, [dead])

    assert findings[0].health != sweep.SERVING, findings[0]
    assert sweep.exit_code(findings) != EXIT_OK
