"""Who may call AdminService: bearer tokens from a tokens file, mTLS peers, and the interceptor.

Tokens file (`AuthSettings.tokens_file`), UTF-8, one token per line:

    # principal  scope  sha256-hex-of-token                                               [expires]
    alice        write  9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    dashboards   read   60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752  2027-01-31

- fields are separated by whitespace; `#` starts a comment (to the end of the line); blank lines
  are ignored;
- principal: 1-128 characters of letters, digits and `. _ @ + -`, starting with a letter or digit
  (no `:`, so a token can never pose as an mTLS principal `cn:<name>`);
- scope: `read` (every read call) or `write` (read, plus ReprocessDeadLetters and
  ResolveDeadLetters);
- digest: SHA-256 of the token's UTF-8 text, 64 hex digits, e.g. `printf %s "$TOKEN" | sha256sum`;
  the file holds no secret, and two lines may not share a digest;
- expires (optional): ISO 8601 date or date-time, e.g. `2027-01-31` or `2027-01-31T12:00:00+02:00`;
  without a zone it is UTC; the token is rejected from that instant on.

A malformed line is a `TokensFileInvalid` naming the file and line number: fatal at start; on a
reload (SIGHUP) it is logged and the previous set stays in force.

Clients send `authorization: Bearer <token>` metadata (see admin/ops/bearer.py). Without that
header, a peer certificate verified by the server's client CA authenticates as
`cn:<common name>`, with the scope `AuthSettings.mtls_scopes` gives it (read when not listed).
Health and reflection are open.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import hashlib
import hmac
import inspect
import logging
import re
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from admin.errors import AdminError
from admin.ops.bearer import TOKEN_ENV as TOKEN_ENV  # noqa: PLC0414 - re-exported for clients
from admin.ops.bearer import bearer_metadata as bearer_metadata  # noqa: PLC0414 - as above
from admin.ops.bearer import token_from_env_or_file as token_from_env_or_file  # noqa: PLC0414
from admin.ops.settings import AuthSettings, Scope

if TYPE_CHECKING:  # the catalog (asyncpg, redis) loads with the server, not with the CLI
    from admin.catalog.audit import AuditLog

log = logging.getLogger(__name__)

SERVICE = "conveyor.v1.AdminService"
"""The only service the interceptor guards; health and reflection pass through."""
WRITE_METHODS = frozenset(
    f"/{SERVICE}/{name}" for name in ("ReprocessDeadLetters", "ResolveDeadLetters")
)
"""Methods that need write scope; every other AdminService method needs read."""

_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_DIGEST_RE = re.compile(r"[0-9a-fA-F]{64}")
_USER_AGENT_MAX = 256


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a token's principal, `cn:<name>` for mTLS, or `anonymous`."""

    name: str
    scope: Scope


ANONYMOUS = Principal("anonymous", Scope.WRITE)
"""Who every call runs as when `AuthSettings.allow_unauthenticated` is set."""

current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)
"""The caller of the AdminService RPC being served; None outside one."""


class Denial(enum.StrEnum):
    """Why a call was refused; recorded as the audit row's reason."""

    MISSING = "missing_credential"
    MALFORMED = "malformed_credential"
    UNKNOWN = "unknown_token"
    EXPIRED = "expired_token"
    SCOPE = "insufficient_scope"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A credential that did not authenticate; `principal` is known only for an expired token."""

    reason: Denial
    principal: str | None = None


class TokensFileInvalid(AdminError):
    """The tokens file cannot be read or has a malformed line; nothing was loaded from it."""

    def __init__(self, *, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"tokens file {where}: {problem}")
        self.path = path
        self.line = line
        """1-based line number of the malformed line; None when the file could not be read."""
        self.problem = problem


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One line of the tokens file."""

    principal: str
    scope: Scope
    digest: bytes
    """SHA-256 of the token (32 bytes)."""
    expires: datetime | None
    line: int


def token_digest(token: str) -> str:
    """The hex SHA-256 of `token`, as the tokens file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, *, path: Path) -> tuple[TokenEntry, ...]:
    """The entries of a tokens file's `text`; TokensFileInvalid names `path` and the bad line."""
    entries: list[TokenEntry] = []
    seen: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry = _parse_line(line, path=path, number=number)
        if entry is None:
            continue
        if entry.digest in seen:
            raise TokensFileInvalid(
                path=path, line=number, problem=f"same digest as line {seen[entry.digest]}"
            )
        seen[entry.digest] = number
        entries.append(entry)
    return tuple(entries)


def _parse_line(line: str, *, path: Path, number: int) -> TokenEntry | None:
    fields = line.split("#", 1)[0].split()
    if not fields:
        return None

    def bad(problem: str) -> TokensFileInvalid:
        return TokensFileInvalid(path=path, line=number, problem=problem)

    if len(fields) not in (3, 4):
        raise bad(f"expected 'principal scope sha256-hex [expires]', got {len(fields)} fields")
    name, scope, digest, *rest = fields
    if not _PRINCIPAL_RE.fullmatch(name):
        raise bad(
            f"principal {name[:40]!r} must be 1-128 letters, digits or . _ @ + -, "
            "starting with a letter or digit"
        )
    if scope not in (Scope.READ, Scope.WRITE):
        raise bad(f"scope {scope[:40]!r} must be read or write")
    if not _DIGEST_RE.fullmatch(digest):
        # The value is not echoed: it may be a token pasted where its digest belongs.
        raise bad("third field must be the token's SHA-256 as 64 hex digits, not the token")
    return TokenEntry(
        principal=name,
        scope=Scope(scope),
        digest=bytes.fromhex(digest),
        expires=_parse_expiry(rest[0], bad) if rest else None,
        line=number,
    )


def _parse_expiry(text: str, bad: Callable[[str], TokensFileInvalid]) -> datetime:
    try:
        expires = datetime.fromisoformat(text)
    except ValueError:
        raise bad(
            f"expiry {text[:40]!r} is not an ISO 8601 date or date-time, "
            "e.g. 2027-01-31 or 2027-01-31T12:00:00Z"
        ) from None
    return expires if expires.tzinfo is not None else expires.replace(tzinfo=UTC)


class TokenStore:
    """The tokens of one tokens file; `reload()` swaps in the file's new contents if they parse."""

    def __init__(self, path: Path, entries: Sequence[TokenEntry]) -> None:
        self.path = path
        self._entries = tuple(entries)

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        """Read and parse `path`; raises TokensFileInvalid."""
        store = cls(path, _read(path))
        log.info("loaded %d admin tokens from %s", len(store), path)
        return store

    def reload(self) -> bool:
        """Re-read the file; on any error log it, keep the current tokens and return False."""
        try:
            entries = _read(self.path)
        except TokensFileInvalid as exc:
            log.error("%s; keeping the %d tokens loaded before", exc.message, len(self))
            return False
        self._entries = entries
        log.info("reloaded %d admin tokens from %s", len(entries), self.path)
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, token: str, *, now: datetime | None = None) -> Principal | Rejected:
        """The principal `token` authenticates, or why it does not (unknown or expired)."""
        presented = hashlib.sha256(token.encode()).digest()
        found: TokenEntry | None = None
        # Every digest is compared, matched or not, so timing says nothing about which matched.
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, presented):
                found = entry
        if found is None:
            return Rejected(Denial.UNKNOWN)
        if found.expires is not None and (now or datetime.now(UTC)) >= found.expires:
            return Rejected(Denial.EXPIRED, principal=found.principal)
        return Principal(found.principal, found.scope)

    def authenticate(self, token: str, *, now: datetime | None = None) -> Principal | None:
        """The principal `token` authenticates; None when unknown or expired (see `verify`)."""
        outcome = self.verify(token, now=now)
        return outcome if isinstance(outcome, Principal) else None


def _read(path: Path) -> tuple[TokenEntry, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokensFileInvalid(path=path, line=None, problem=f"cannot read: {exc}") from exc
    return parse_tokens(text, path=path)


def install_sighup_reload(loop: asyncio.AbstractEventLoop, store: TokenStore) -> None:
    """Reload `store` whenever the process gets SIGHUP (replaces any SIGHUP handler of `loop`)."""
    loop.add_signal_handler(signal.SIGHUP, store.reload)


def identify(
    metadata: Sequence[tuple[str, str | bytes]],
    auth_context: Mapping[str, Sequence[bytes]],
    *,
    store: TokenStore | None,
    mtls_scopes: Mapping[str, Scope],
    now: datetime | None = None,
) -> Principal | Rejected:
    """Who a call's credentials say it is: the bearer token if any, else a verified client CN.

    An invalid bearer token is rejected even when a certificate would have authenticated.
    """
    values = [value for key, value in metadata if key == "authorization"]
    if not values:
        names = auth_context.get("x509_common_name") or ()
        if not names:
            return Rejected(Denial.MISSING)
        cn = names[0].decode("utf-8", errors="replace")
        return Principal(f"cn:{cn}", mtls_scopes.get(cn, Scope.READ))
    token = _bearer_token(values)
    if token is None:
        return Rejected(Denial.MALFORMED)
    if store is None:
        return Rejected(Denial.UNKNOWN)
    return store.verify(token, now=now)


def _bearer_token(values: Sequence[str | bytes]) -> str | None:
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return None
    return token


_MESSAGES = {
    Denial.MISSING: "no credential: send 'authorization: Bearer <token>' metadata "
    "or a client certificate",
    Denial.MALFORMED: "malformed authorization metadata: expected one 'Bearer <token>'",
    Denial.UNKNOWN: "unknown bearer token",
    Denial.EXPIRED: "bearer token expired",
}

_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_BEHAVIOR_ATTRS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


# grpc ships no type information, so its base class is Any to mypy.
class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates and authorizes every AdminService call; audits every denial.

    The check runs inside the method handler (not in `intercept_service`), because only the
    servicer context knows the peer address and its certificate. The caller is then available to
    the servicer as `current_principal.get()`.
    """

    def __init__(
        self, settings: AuthSettings, audit: AuditLog, store: TokenStore | None = None
    ) -> None:
        """`store` defaults to loading `settings.tokens_file` (TokensFileInvalid if it is bad)."""
        if store is None and settings.tokens_file is not None:
            store = TokenStore.load(settings.tokens_file)
        self.settings = settings
        self.store = store
        self._audit = audit
        if settings.allow_unauthenticated:
            log.warning(
                "AdminService accepts unauthenticated calls, all with write scope: "
                "for local demos only"
            )

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(f"/{SERVICE}/"):
            return handler
        return _guarded(handler, lambda context: self._admit(method, context))

    async def _admit(self, method: str, context: Any) -> Principal:
        """The caller, once authenticated and allowed `method`; otherwise the call is aborted."""
        if self.settings.allow_unauthenticated:
            return ANONYMOUS
        outcome = identify(
            tuple(context.invocation_metadata() or ()),
            context.auth_context() or {},
            store=self.store,
            mtls_scopes=self.settings.mtls_scopes,
        )
        if isinstance(outcome, Rejected):
            await self._deny(
                context, method, grpc.StatusCode.UNAUTHENTICATED, outcome, _MESSAGES[outcome.reason]
            )
        required = Scope.WRITE if method in WRITE_METHODS else Scope.READ
        if not outcome.scope.includes(required):
            message = f"principal {outcome.name!r} has {outcome.scope} scope; {method} needs write"
            await self._deny(
                context,
                method,
                grpc.StatusCode.PERMISSION_DENIED,
                Rejected(Denial.SCOPE, outcome.name),
                message,
            )
        return outcome

    async def _deny(
        self, context: Any, method: str, code: Any, rejected: Rejected, message: str
    ) -> NoReturn:
        peer = str(context.peer() or "unknown")
        detail = {"peer": peer, "denial": rejected.reason.value}
        agent = _metadata_value(context.invocation_metadata() or (), "user-agent")
        if agent:
            detail["user_agent"] = agent[:_USER_AGENT_MAX]
        log.info(
            "AdminService denied method=%s peer=%s reason=%s principal=%s",
            method,
            peer,
            rejected.reason,
            rejected.principal,
        )
        await self._audit.record_denial(
            source=peer_host(peer),
            principal=rejected.principal or "unauthenticated",
            action=method,
            outcome=code.name.lower(),
            reason=rejected.reason.value,
            detail=detail,
        )
        await context.abort(code, message)
        raise AssertionError("grpc.aio's context.abort always raises")


def peer_host(peer: str) -> str:
    """`peer` (`ipv4:1.2.3.4:5678`, `ipv6:[::1]:5678`, `unix:...`) without its port."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rpartition(":")[0]
    return peer


def _metadata_value(metadata: Sequence[tuple[str, str | bytes]], key: str) -> str | None:
    for k, value in metadata:
        if k == key and isinstance(value, str):
            return value
    return None


def _guarded(handler: Any, admit: Callable[[Any], Awaitable[Principal]]) -> Any:
    """A copy of `handler` whose behavior first awaits `admit(context)` (which may abort).

    AdminService behaviors are async: coroutines, or async generators for streamed responses.
    `current_principal` is set without a reset: grpc.aio runs each RPC in its own task, whose
    context copy dies with it.
    """
    kind = (bool(handler.request_streaming), bool(handler.response_streaming))
    behavior = getattr(handler, _BEHAVIOR_ATTRS[kind])

    async def call(request: Any, context: Any) -> Any:
        current_principal.set(await admit(context))
        return await behavior(request, context)

    async def stream(request: Any, context: Any) -> Any:
        current_principal.set(await admit(context))
        async for response in behavior(request, context):
            yield response

    # A coroutine with a streamed response writes through context.write() and returns None.
    streams = kind[1] and not inspect.iscoroutinefunction(behavior)
    return _HANDLER_FACTORIES[kind](
        stream if streams else call,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
