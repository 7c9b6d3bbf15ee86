"""Settings of the ops plane every relay and consumer runs: gRPC server, AdminService auth, health.

Each field's docstring is its user-facing meaning: the `conveyor relay` and `conveyor consume`
options are derived from these declarations (admin/cli/setting_options.py). This module loads
no grpc, protobuf, asyncpg, Redis or OpenTelemetry SDK, so the command line can read it at
start-up.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from admin.errors import InvalidInput

if TYPE_CHECKING:  # protobuf's descriptor pool loads when a process builds its ops plane
    from admin.ops.payloads import PayloadTypes

RELAY_GRPC_ADDR = "127.0.0.1:50051"
"""Where `conveyor relay` listens by default."""
CONSUMER_GRPC_ADDR = "127.0.0.1:50052"
"""Where `conveyor consume` listens by default (beside a relay on the same host)."""


def check_address(addr: str, what: str, example: str) -> None:
    """ValueError unless `addr` is host:port with a port 0-65535 (IPv6 hosts in brackets)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f"invalid {what} {addr!r}: use host:port, e.g. {example} (port 0 picks a free one)"
        )


class Scope(enum.StrEnum):
    """What a principal may do: `write` includes everything `read` allows."""

    READ = "read"
    WRITE = "write"

    def includes(self, required: Scope) -> bool:
        """Whether this scope allows a call that needs `required`."""
        return self is Scope.WRITE or required is Scope.READ


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How the process serves gRPC; validated on construction."""

    grpc_addr: str
    """Where to listen for health and AdminService, as host:port; port 0 picks a free port and
    logs it (`gRPC listening on ...`)."""
    reflection: bool = True
    """Serve gRPC server reflection (for grpcurl)."""
    tls_cert: Path | None = None
    """Server certificate (PEM): with its key, serve TLS."""
    tls_key: Path | None = None
    """Private key (PEM) of the server certificate."""
    tls_client_ca: Path | None = None
    """Require client certificates signed by this CA (mTLS); a client's common name becomes
    principal `cn:<name>` with read scope."""

    def __post_init__(self) -> None:
        check_address(self.grpc_addr, "gRPC address", "127.0.0.1:50051")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("mTLS (--tls-client-ca) needs a server certificate and key too")
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag}: TLS file {str(path)!r} does not exist")
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{flag}: TLS file {str(path)!r} cannot be read (permissions)")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """How AdminService calls are authenticated; validated on construction."""

    tokens_file: Path | None = None
    """AdminService bearer tokens, one `principal scope sha256-hex [expires]` per line, reloaded
    on SIGHUP; without it no bearer token is accepted."""
    allow_unauthenticated: bool = False
    """Run every AdminService call as `anonymous` with write scope; local demos only (logged as a
    warning)."""
    mtls_scopes: Mapping[str, Scope] = field(default_factory=dict)
    """Scope of each client-certificate common name; a name not listed gets read."""

    def __post_init__(self) -> None:
        scopes: dict[str, Scope] = {}
        for cn, scope in self.mtls_scopes.items():
            if not cn or cn != cn.strip():
                raise InvalidInput(
                    f"mTLS common name {cn!r} must be non-empty without surrounding spaces",
                    field="mtls_scopes",
                    value=cn,
                )
            if scope not in (Scope.READ, Scope.WRITE):
                raise InvalidInput(
                    f"mTLS scope {scope!r} for {cn!r} must be read or write",
                    field="mtls_scopes",
                    value=str(scope),
                )
            scopes[cn] = Scope(scope)
        object.__setattr__(self, "mtls_scopes", MappingProxyType(scopes))
        if self.allow_unauthenticated and self.tokens_file is not None:
            raise InvalidInput(
                "allow_unauthenticated would ignore tokens_file: set only one of them",
                field="allow_unauthenticated",
                value="true",
            )


STARTUP_TIMEOUT = 30.0
"""Seconds a relay or consumer waits at start for PostgreSQL and Redis by default."""


@dataclass(frozen=True, slots=True)
class StartupSettings:
    """How a relay or consumer starts; validated on construction.

    Before it creates anything (consumer groups and streams in Redis, its entry in the catalog),
    a process checks that its gRPC address can be bound (else exit 8), that PostgreSQL answers
    and its schemas are at head (else exit 6), and that Redis answers. PostgreSQL and Redis get
    `startup_timeout` to answer; after that the process exits 7 with one line naming the address.
    """

    startup_timeout: float = STARTUP_TIMEOUT
    """How long to wait at start for PostgreSQL and Redis to answer, trying again with a warning
    per failed attempt; then exit 7 naming the address. 0 fails at once. Checked before anything
    is created in Redis or the catalog; once running, outages are waited out without limit."""

    def __post_init__(self) -> None:
        if not self.startup_timeout >= 0:
            raise ValueError(f"startup_timeout must be >= 0 seconds, got {self.startup_timeout!r}")


@dataclass(frozen=True)
class OpsSettings:
    """How the ops plane of a process runs."""

    server: ServerSettings
    """How the gRPC server listens."""
    auth: AuthSettings = field(default_factory=AuthSettings)
    """Who may call AdminService."""
    stall_timeout: float = 60.0
    """Work waiting and none done for this long makes a component NOT_SERVING."""
    payload_types: PayloadTypes = field(default_factory=lambda: _payload_types(()))
    """Message types known beyond the process's own, for showing dead-letter payloads as JSON."""
    page_token_key: bytes | None = None
    """Key signing ListDeadLetters page tokens; by default derived from the database URL, so every
    process of one deployment accepts the others' tokens. Set the same value on every process
    behind one address if their database URLs differ."""
    metrics_addr: str | None = None
    """Serve the process's metrics as Prometheus text at http://HOST:PORT/metrics (host:port;
    port 0 picks a free port and logs it); off by default. The same instruments are exported
    over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, and read by `conveyor metrics`."""

    @property
    def authenticates_nobody(self) -> bool:
        """Whether no AdminService call can succeed: no tokens file, no client CA for mTLS, and
        unauthenticated calls not allowed."""
        auth = self.auth
        return (
            auth.tokens_file is None
            and self.server.tls_client_ca is None
            and not auth.allow_unauthenticated
        )

    def __post_init__(self) -> None:
        if not self.stall_timeout > 0:
            raise ValueError(f"stall_timeout must be > 0 seconds, got {self.stall_timeout!r}")
        if self.metrics_addr is not None:
            check_address(self.metrics_addr, "metrics_addr", "127.0.0.1:9464")


def ops_settings(
    *,
    grpc_addr: str,
    reflection: bool,
    tokens_file: Path | None,
    allow_unauthenticated: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    stall_timeout: float,
    mtls_writers: Sequence[str] = (),
    descriptor_sets: Sequence[Path] = (),
    page_token_key: str | None = None,
    metrics_addr: str | None = None,
) -> OpsSettings:
    """OpsSettings from command-line values; ValueError (or InvalidInput) naming a bad one."""
    if mtls_writers and tls_client_ca is None:
        raise ValueError("--mtls-writer names client certificates: it needs --tls-client-ca")
    server = ServerSettings(
        grpc_addr=grpc_addr,
        reflection=reflection,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
    )
    auth = AuthSettings(
        tokens_file=tokens_file,
        allow_unauthenticated=allow_unauthenticated,
        mtls_scopes=dict.fromkeys(mtls_writers, Scope.WRITE),
    )
    return OpsSettings(
        server=server,
        auth=auth,
        stall_timeout=stall_timeout,
        payload_types=_payload_types(descriptor_sets),
        page_token_key=page_token_key.encode() if page_token_key else None,
        metrics_addr=metrics_addr or None,
    )


def _payload_types(descriptor_sets: Sequence[Path]) -> PayloadTypes:
    from admin.ops.payloads import PayloadTypes  # noqa: PLC0415 - see the TYPE_CHECKING import

    return PayloadTypes.load(descriptor_sets)
