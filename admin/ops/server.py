"""The gRPC server every relay and consumer process runs: health, AdminService, reflection."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from admin.errors import AddressUnavailable
from admin.ops.settings import ServerSettings
from conveyor.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest request accepted; bigger ones get RESOURCE_EXHAUSTED from grpc itself."""


def check_bindable(grpc_addr: str) -> None:
    """Raise AddressUnavailable unless `grpc_addr` (host:port) can be bound now.

    Binds and closes a socket on each address the host resolves to, as gRPC will, so a taken
    port is reported in one line before gRPC prints its own. Port 0 always binds.
    """
    host, _, port = grpc_addr.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if int(port) == 0:
        return
    try:
        found = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        reason = f"unknown host {host!r}: {exc.strerror}"
        raise AddressUnavailable(address=grpc_addr, reason=reason, in_use=False) from exc
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in found:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's own sockets
            try:
                sock.bind(sockaddr)
            except OSError as error:
                failures.append(error)
    in_use = [e for e in failures if e.errno == errno.EADDRINUSE]
    # gRPC serves when one of the resolved addresses binds (`localhost` without IPv6, say).
    if in_use or (failures and len(failures) == len(found)):
        first = (in_use or failures)[0]
        reason = (first.strerror or str(first)).lower()
        raise AddressUnavailable(address=grpc_addr, reason=reason, in_use=bool(in_use)) from first


_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})


def advertised_address(grpc_addr: str, port: int) -> str:
    """Where others dial a server bound to `grpc_addr` on `port` (the bound one, also when the
    address asked for 0): the address's own host, or this host's name when it is a wildcard
    (0.0.0.0, [::]), which no other host can dial."""
    host = grpc_addr.rpartition(":")[0]
    if host.removeprefix("[").removesuffix("]") in _WILDCARDS:
        host = socket.gethostname()
    return f"{host}:{port}"


def check_tls(settings: ServerSettings) -> None:
    """Raise ValueError naming the files unless the TLS certificate and key (and client CA) of
    `settings` load as gRPC will load them: a certificate with its own private key, in PEM."""
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if cert is None or key is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A key that needs a password gets none (and fails) rather than a prompt on the terminal.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate and its "
            f"unencrypted private key ({_ssl_reason(exc)})"
        ) from exc
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"--tls-client-ca {ca} is not a PEM CA certificate ({_ssl_reason(exc)})"
            ) from exc


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
    if reason == "KEY_VALUES_MISMATCH":
        return "the key is not the certificate's"
    if reason:
        return str(reason).lower().replace("_", " ")
    if isinstance(exc, ssl.SSLError):  # OpenSSL names no reason when the PEM does not parse
        return "a file does not parse as the PEM it should be: given the wrong way round?"
    return exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else str(exc)


class OpsServer:
    """A grpc.aio server with the health servicer, AdminService and (optionally) reflection."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        health_servicer: Any,
        admin_servicer: Any,
        interceptors: Sequence[Any] = (),
    ) -> None:
        self.settings = settings
        self.port = 0
        self._server = grpc.aio.server(
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self._server)
        # Generated grpc stubs carry no annotations.
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer, self._server)  # type: ignore[no-untyped-call]
        if settings.reflection:
            names = (
                admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            )
            reflection.enable_server_reflection(names, self._server)

    async def start(self) -> int:
        """Bind and start; returns the port (the chosen one when the address asked for 0);
        AddressUnavailable when the address cannot be bound."""
        s = self.settings
        check_bindable(s.grpc_addr)  # else gRPC logs its own lines, which name no option
        if s.tls_cert is not None and s.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
                root_certificates=s.tls_client_ca.read_bytes() if s.tls_client_ca else None,
                require_client_auth=s.tls_client_ca is not None,
            )
            self.port = self._server.add_secure_port(s.grpc_addr, credentials)
        else:
            self.port = self._server.add_insecure_port(s.grpc_addr)
        await self._server.start()
        host = s.grpc_addr.rpartition(":")[0]
        log.info(
            "gRPC listening on %s:%d (health, AdminService%s)",
            host,
            self.port,
            ", reflection" if s.reflection else "",
        )
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        await self._server.stop(grace)
