"""The gRPC client of the `conveyor` CLI: connection options, calls, and status -> exit code.

Exit codes of every command that talks to a relay or consumer process:

    0  ok
    1  server unreachable, UNAVAILABLE, DEADLINE_EXCEEDED, or any other server error
    2  bad input: a flag or argument (checked before any call), or INVALID_ARGUMENT from the server
    3  NOT_FOUND: no such dead letter, event or health service
    4  NOT_SERVING (`conveyor health`; `conveyor status --all`: a registered process not
       SERVING, unreachable or absent)
    5  UNAUTHENTICATED or PERMISSION_DENIED: no, unknown or expired token; read scope for a write
    6  FAILED_PRECONDITION: the server refused the call in the current state

A failed call prints one line on stderr: `conveyor: error: <status code name>: <server message>`.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar, get_type_hints

import grpc
import typer
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2_grpc

from admin.cli.options import EXIT_FAILURE, EXIT_OK, EXIT_PRECONDITION, EXIT_USAGE, fail
from admin.errors import InvalidInput
from admin.ops.bearer import TOKEN_ENV, bearer_metadata, token_from_env_or_file
from conveyor.v1 import admin_pb2_grpc

EXIT_NOT_FOUND = 3
"""NOT_FOUND: the dead letter, event or health service does not exist."""
EXIT_NOT_SERVING = 4
"""`conveyor health`: the service answered NOT_SERVING (as grpc_health_probe exits); `conveyor
status --all`: a registered process is not SERVING, unreachable or absent."""
EXIT_DENIED = 5
"""UNAUTHENTICATED or PERMISSION_DENIED."""

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 server unreachable, UNAVAILABLE, DEADLINE_EXCEEDED or other server "
    "error; 2 bad input (also INVALID_ARGUMENT); 3 NOT_FOUND; 4 NOT_SERVING (health; status "
    "--all: a process not SERVING, unreachable or absent); "
    "5 UNAUTHENTICATED or PERMISSION_DENIED; 6 FAILED_PRECONDITION."
)
"""The `--help` epilog of every client command."""

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0
_PANEL = "Connection"

R = TypeVar("R")

_EXIT_CODES: dict[Any, int] = {
    grpc.StatusCode.OK: EXIT_OK,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_PRECONDITION,
}
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

Target = Annotated[
    str,
    typer.Option(
        "--target",
        envvar="CONVEYOR_TARGET",
        rich_help_panel=_PANEL,
        help="host:port of any relay or consumer process's gRPC server.",
    ),
]
TokenFile = Annotated[
    str | None,
    typer.Option(
        "--token-file",
        envvar="CONVEYOR_ADMIN_TOKEN_FILE",
        rich_help_panel=_PANEL,
        help=f"File holding the bearer token. Default: ${TOKEN_ENV}.",
    ),
]
TlsCa = Annotated[
    str | None,
    typer.Option(
        "--tls-ca",
        envvar="CONVEYOR_ADMIN_TLS_CA",
        rich_help_panel=_PANEL,
        help="PEM of the CA that signed the server's certificate; connects over TLS.",
    ),
]
TlsCert = Annotated[
    str | None,
    typer.Option(
        "--tls-cert",
        envvar="CONVEYOR_ADMIN_TLS_CERT",
        rich_help_panel=_PANEL,
        help="Client certificate (PEM) for mTLS; needs --tls-key.",
    ),
]
TlsKey = Annotated[
    str | None,
    typer.Option(
        "--tls-key",
        envvar="CONVEYOR_ADMIN_TLS_KEY",
        rich_help_panel=_PANEL,
        help="Private key (PEM) of --tls-cert.",
    ),
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout",
        envvar="CONVEYOR_ADMIN_TIMEOUT",
        rich_help_panel=_PANEL,
        help="Seconds a call may take (streams: seconds without progress).",
    ),
]
ENVIRONMENT_ONLY = {
    TOKEN_ENV: "Bearer token sent with every AdminService call when --token-file is not given; "
    "read only from the environment, so the secret stays out of shell history and `ps`.",
    "CONVEYOR_TRACE_SAMPLE_RATIO": "Share of root traces `conveyor relay` and `conveyor consume` "
    "keep (events enqueued outside any trace, relay batches): a number from 0 to 1, default "
    "0.01; unused when OTEL_TRACES_SAMPLER is set (docs/tracing.md).",
}
"""Settings of the client commands that have no flag, each with its meaning."""

AsJson = Annotated[
    bool, typer.Option("--json", help="Print the server's answer as JSON (proto field names).")
]


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and how to call: validated connection options."""

    target: str
    token: str | None
    timeout: float
    root_certificates: bytes | None = None
    client_key: bytes | None = None
    client_cert: bytes | None = None

    @property
    def secure(self) -> bool:
        """Whether to use TLS: a CA or a client certificate was given."""
        return self.root_certificates is not None or self.client_cert is not None


def connection(
    target: str,
    token_file: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    timeout: float,
) -> Connection:
    """The Connection the options describe; exits 2 naming the option that is wrong."""
    if not target.strip():
        fail("--target must be host:port, e.g. 127.0.0.1:50051", EXIT_USAGE)
    if not 0 < timeout < float("inf"):
        fail(f"--timeout must be a positive number of seconds, got {timeout}", EXIT_USAGE)
    if (tls_cert is None) != (tls_key is None):
        fail("mTLS needs both --tls-cert and --tls-key", EXIT_USAGE)
    try:
        token = token_from_env_or_file(token_file)
    except InvalidInput as exc:
        fail(exc.message, EXIT_USAGE)
    return Connection(
        target=target.strip(),
        token=token,
        timeout=timeout,
        root_certificates=_read_pem("--tls-ca", tls_ca),
        client_key=_read_pem("--tls-key", tls_key),
        client_cert=_read_pem("--tls-cert", tls_cert),
    )


_CONNECTION_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("target", Target, DEFAULT_TARGET),
    ("token_file", TokenFile, None),
    ("tls_ca", TlsCa, None),
    ("tls_cert", TlsCert, None),
    ("tls_key", TlsKey, None),
    ("timeout", Timeout, DEFAULT_TIMEOUT),
)


def with_connection(command: Callable[..., R]) -> Callable[..., R]:
    """`command` with the connection options added to its CLI; it gets them as `conn`.

    So every client command takes the same options, validated alike: `command` declares
    `conn: Connection` and typer sees --target, --token-file, --tls-* and --timeout instead.
    """
    hints = get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(command).parameters.values()
        if p.name != "conn"
    ]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=hint, default=default)
        for name, hint, default in _CONNECTION_OPTIONS
    ]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> R:
        options = {name: kwargs.pop(name) for name, _, _ in _CONNECTION_OPTIONS}
        return command(*args, conn=connection(**options), **kwargs)

    # typer reads the parameters from the signature; annotations are resolved already.
    run.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
    return run


def _read_pem(flag: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        fail(f"cannot read {flag} {path!r}: {exc.strerror or exc}", EXIT_USAGE)
    if b"-----BEGIN" not in data:
        fail(f"{flag} {path!r} is not a PEM file", EXIT_USAGE)
    return data


def exit_code(code: Any) -> int:
    """The exit code for a grpc.StatusCode (see this module's docstring)."""
    return _EXIT_CODES.get(code, EXIT_FAILURE)


class Client:
    """One channel to a server with its AdminService and Health stubs; `with` closes it.

    Calls that fail print the one-line error and exit with the mapped code (typer.Exit).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        if conn.secure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=conn.root_certificates,
                private_key=conn.client_key,
                certificate_chain=conn.client_cert,
            )
            self._channel = grpc.secure_channel(conn.target, credentials)
        else:
            self._channel = grpc.insecure_channel(conn.target)
        # Generated grpc stubs carry no annotations.
        self.admin: Any = admin_pb2_grpc.AdminServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.health: Any = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._channel.close()

    def call(
        self,
        method: Callable[..., Any],
        request: Message,
        *,
        auth: bool = True,
        unexplained: Mapping[Any, str] | None = None,
    ) -> Any:
        """The response of a unary call, within `--timeout`. `unexplained` maps a status code to
        the message shown when the server sends that code without one."""
        try:
            return method(request, timeout=self.conn.timeout, metadata=self._metadata(auth))
        except grpc.RpcError as exc:
            self.fail(exc, unexplained)

    def ask(
        self, method: Callable[..., Any], request: Message, *, timeout: float, auth: bool = True
    ) -> Any:
        """The response of a unary call within `timeout` seconds; a failure is raised (a
        grpc.RpcError), for callers that report it beside other answers instead of exiting."""
        return method(request, timeout=timeout, metadata=self._metadata(auth))

    def attempt(self, method: Callable[..., Any], request: Message) -> Any | None:
        """The response of a unary call made only to explain another answer better; None when it
        fails, since that answer stands without it."""
        try:
            return method(request, timeout=self.conn.timeout, metadata=self._metadata(True))
        except grpc.RpcError:
            return None

    def stream(
        self,
        method: Callable[..., Any],
        request: Message,
        *,
        idle: float | None,
        auth: bool = True,
    ) -> Iterator[Any]:
        """The responses of a server-streaming call; cancelled after `idle` s without one."""
        call = method(request, metadata=self._metadata(auth))
        stalled = threading.Event()

        def expire() -> None:
            stalled.set()
            call.cancel()

        try:
            while True:
                timer = threading.Timer(idle, expire) if idle is not None else None
                if timer is not None:
                    timer.daemon = True
                    timer.start()
                try:
                    response = next(call)
                except StopIteration:
                    return
                finally:
                    if timer is not None:
                        timer.cancel()
                yield response
        except grpc.RpcError as exc:
            if stalled.is_set():
                fail(f"DEADLINE_EXCEEDED: no answer from {self.conn.target} in {idle:g} s")
            self.fail(exc)
        finally:
            call.cancel()  # no-op once finished; stops the server's work on an early exit

    def fail(self, exc: Any, unexplained: Mapping[Any, str] | None = None) -> NoReturn:
        """Print `exc` (a grpc.RpcError) as the one-line error and exit with its code; a status
        without a message gets one from `unexplained`, else one saying what the code means."""
        code = exc.code()
        message = " ".join(str(exc.details() or "").split())
        if not message:
            message = (unexplained or {}).get(code) or _meaning(code, self.conn.target)
        if code in _UNREACHABLE:
            message += f" (target {self.conn.target})"
        elif code == grpc.StatusCode.UNAUTHENTICATED and self.conn.token is None:
            message += f"; no token was sent: set ${TOKEN_ENV} or use --token-file"
        name = code.name if code is not None else "UNKNOWN"
        fail(f"{name}: {message}", exit_code(code))

    def _metadata(self, auth: bool) -> tuple[tuple[str, str], ...]:
        if auth and self.conn.token is not None:
            return bearer_metadata(self.conn.token)
        return ()


def _meaning(code: Any, target: str) -> str:
    """What a status code that came without a message means here."""
    meanings = {
        grpc.StatusCode.NOT_FOUND: "the server has no such item (it sent no message)",
        grpc.StatusCode.UNIMPLEMENTED: f"{target} does not serve this call: is it a Conveyor "
        "relay or consumer of this version?",
        grpc.StatusCode.CANCELLED: "the call was cancelled",
        grpc.StatusCode.INTERNAL: "the server failed without saying why; see its log",
        grpc.StatusCode.UNKNOWN: "the server failed without saying why; see its log",
    }
    return meanings.get(code, "the server sent no message")
