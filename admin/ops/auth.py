"""Who may call AdminService: a bearer token (see admin/ops/tokens.py) or an mTLS peer, admitted
or denied (and audited) by the interceptor.

Clients send `authorization: Bearer <token>` metadata (see admin/ops/bearer.py). Without that
header, a peer certificate verified by the server's client CA authenticates as
`cn:<common name>`, with the scope `AuthSettings.mtls_scopes` gives it (read when not listed).
Health and reflection are open.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from admin.ops.settings import AuthSettings, Scope
from admin.ops.tokens import Denial, Principal, Rejected, TokenStore

if TYPE_CHECKING:  # the catalog (asyncpg, redis) loads with the server, not with the CLI
    from admin.catalog.audit import AuditLog

log = logging.getLogger(__name__)

SERVICE = "conveyor.v1.AdminService"
"""The only service the interceptor guards; health and reflection pass through."""
WRITE_METHODS = frozenset(
    f"/{SERVICE}/{name}" for name in ("ReprocessDeadLetters", "ResolveDeadLetters")
)
"""Methods that need write scope; every other AdminService method needs read."""

_USER_AGENT_MAX = 256

ANONYMOUS = Principal("anonymous", Scope.WRITE)
"""Who every call runs as when `AuthSettings.allow_unauthenticated` is set."""

current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)
"""The caller of the AdminService RPC being served; None outside one."""


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
_NO_TOKENS = (
    "this process accepts no bearer tokens (started without --tokens-file or "
    "CONVEYOR_TOKENS_FILE): restart it with one holding this token's line"
)
"""The answer to a bearer token sent to a process that has no tokens to check it against."""

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
            message = _MESSAGES[outcome.reason]
            if outcome.reason is Denial.UNKNOWN and self.store is None:
                message = _NO_TOKENS
            await self._deny(context, method, grpc.StatusCode.UNAUTHENTICATED, outcome, message)
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
