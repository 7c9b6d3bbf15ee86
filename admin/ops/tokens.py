"""Bearer tokens: the tokens file, its parsing, and the `TokenStore` that verifies a token.

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
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from admin.errors import AdminError
from admin.ops.settings import Scope

log = logging.getLogger(__name__)

_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_DIGEST_RE = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a token's principal, `cn:<name>` for mTLS, or `anonymous`."""

    name: str
    scope: Scope


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
    problem = principal_problem(name)
    if problem is not None:
        raise bad(problem)
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


def principal_problem(name: str) -> str | None:
    """Why `name` cannot be a token's principal, or None when it can."""
    if _PRINCIPAL_RE.fullmatch(name):
        return None
    return (
        f"principal {name[:40]!r} must be 1-128 letters, digits or . _ @ + -, "
        "starting with a letter or digit"
    )


def parse_expiry(text: str) -> datetime:
    """An expiry as the tokens file reads it (UTC when no zone is given); ValueError saying why
    `text` is not one."""
    try:
        expires = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expiry {text[:40]!r} is not an ISO 8601 date or date-time, "
            "e.g. 2027-01-31 or 2027-01-31T12:00:00Z"
        ) from None
    return expires if expires.tzinfo is not None else expires.replace(tzinfo=UTC)


def _parse_expiry(text: str, bad: Callable[[str], TokensFileInvalid]) -> datetime:
    try:
        return parse_expiry(text)
    except ValueError as exc:
        raise bad(str(exc)) from None


class TokenStore:
    """The tokens of one tokens file; `reload()` swaps in the file's new contents if they parse."""

    def __init__(self, path: Path, entries: Sequence[TokenEntry]) -> None:
        self.path = path
        self._entries = tuple(entries)

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        """Read and parse `path`; raises TokensFileInvalid."""
        store = cls(path, read_tokens(path))
        log.info("loaded %d admin tokens from %s", len(store), path)
        return store

    def reload(self) -> bool:
        """Re-read the file; on any error log it, keep the current tokens and return False."""
        try:
            entries = read_tokens(self.path)
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


def read_tokens(path: Path) -> tuple[TokenEntry, ...]:
    """The entries of the tokens file at `path`; TokensFileInvalid when it cannot be read (its
    `line` is None then) or has a malformed line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = f"cannot read it: {(exc.strerror or str(exc)).lower()}"
        raise TokensFileInvalid(path=path, line=None, problem=problem) from exc
    except UnicodeDecodeError as exc:
        raise TokensFileInvalid(path=path, line=None, problem="not UTF-8 text") from exc
    return parse_tokens(text, path=path)


def install_sighup_reload(loop: asyncio.AbstractEventLoop, store: TokenStore) -> None:
    """Reload `store` whenever the process gets SIGHUP (replaces any SIGHUP handler of `loop`)."""
    loop.add_signal_handler(signal.SIGHUP, store.reload)
