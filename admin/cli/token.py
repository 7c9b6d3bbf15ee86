"""`conveyor token create`: mint an AdminService bearer token and the tokens-file line for it.

The token goes to stdout once, as `export CONVEYOR_ADMIN_TOKEN=...` (so
`eval "$(conveyor token create ...)"` sets it in the shell); everything else goes to stderr. Only
the token's SHA-256 is written anywhere, so the tokens file holds no secret.
"""

from __future__ import annotations

import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from admin.cli.options import EXIT_FAILURE, EXIT_USAGE, fail
from admin.ops.bearer import TOKEN_ENV
from admin.ops.settings import Scope
from admin.ops.tokens import (
    TokensFileInvalid,
    parse_expiry,
    parse_tokens,
    principal_problem,
    token_digest,
)

app = typer.Typer(help="AdminService bearer tokens for --tokens-file.", no_args_is_help=True)

_HEADER = "# principal  scope  sha256-hex-of-token  [expires]   (`conveyor token create --help`)"


@app.command("create")
def create(
    principal: Annotated[
        str,
        typer.Option(
            help="Who holds the token, as audited: 1-128 letters, digits or . _ @ + -, starting "
            "with a letter or digit."
        ),
    ],
    scope: Annotated[
        str,
        typer.Option(help="read (every read call) or write (also dlq reprocess and resolve)."),
    ],
    expires: Annotated[
        str | None,
        typer.Option(
            help="When the token stops working: ISO 8601 date or date-time (UTC without a "
            "zone), e.g. 2027-01-31. Default: never."
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            "--tokens-file",
            help="Append the line to this file (created with mode 0600 when missing); a "
            "principal already in it is refused. Default: only print the line.",
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="When --principal is already in --tokens-file, replace its line (its old token "
            "stops working once processes reread the file) instead of refusing.",
        ),
    ] = False,
) -> None:
    """Mint a random token: print its tokens-file line (or append it to --tokens-file) on
    stderr, and `export CONVEYOR_ADMIN_TOKEN=<token>` on stdout, the only time it is shown."""
    problem = principal_problem(principal)
    if problem is not None:
        fail(f"--principal: {problem}", EXIT_USAGE)
    if scope not in (Scope.READ, Scope.WRITE):
        fail(f"--scope {scope[:40]!r} must be read or write", EXIT_USAGE)
    until = _expiry(expires) if expires is not None else None
    existing = _existing(tokens_file, principal, replace) if tokens_file is not None else ""
    token = secrets.token_urlsafe(32)
    line = "  ".join(f for f in (principal, scope, token_digest(token), until) if f)
    if tokens_file is None:
        _say("add this line to the tokens file (--tokens-file) of every relay and consumer:")
        _say(line)
    else:
        _write(tokens_file, existing, line)
        _say(f"added to {tokens_file}: {line}")
        _say("processes read it at start, and again on SIGHUP")
    print(f"export {TOKEN_ENV}={token}")
    _say(f"the token is on stdout in the {TOKEN_ENV} line, this once; files keep its SHA-256")


def _expiry(text: str) -> str:
    """`text` as the tokens file's expiry field; exits 2 when the parser would refuse it or it
    has passed."""
    try:
        moment = parse_expiry(text.strip())
    except ValueError as exc:
        fail(f"--expires: {exc}", EXIT_USAGE)
    if moment <= datetime.now(UTC):
        fail(f"--expires {text!r} has passed: the token would never work", EXIT_USAGE)
    return moment.isoformat()  # no space inside, unlike some forms fromisoformat accepts


def _existing(path: Path, principal: str, replace: bool) -> str:
    """The current text of the tokens file ("" when missing), without `principal`'s line when
    `replace`; exits when it cannot take `principal`."""
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read tokens file {str(path)!r}: {exc}", EXIT_FAILURE)
    try:
        entries = parse_tokens(text, path=path)
    except TokensFileInvalid as exc:
        fail(f"{exc.message}; fix it before adding a token", EXIT_USAGE)
    for entry in entries:
        if entry.principal == principal and replace:
            lines = text.splitlines(keepends=True)
            return "".join(lines[: entry.line - 1] + lines[entry.line :])
        if entry.principal == principal:
            fail(
                f"{path}:{entry.line} already has principal {principal!r}: choose another "
                "--principal, or add --replace to give it a new token",
                EXIT_USAGE,
            )
    return text


def _write(path: Path, existing: str, line: str) -> None:
    """`existing` (the file's text, maybe less a replaced line) and `line` into `path`, whole or
    not at all: a temporary file beside it (the file's mode, else 0600) renamed over it, so a
    crash or a process rereading it on SIGHUP never sees it half written."""
    lead = _HEADER + "\n" if not existing else ("" if existing.endswith("\n") else "\n")
    target = path.resolve()  # a symlinked tokens file stays a symlink
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o600
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"{existing}{lead}{line}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        fail(f"cannot write tokens file {str(path)!r}: {exc.strerror or exc}", EXIT_FAILURE)


def _say(message: str) -> None:
    print(message, file=sys.stderr)
