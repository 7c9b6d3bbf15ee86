"""The bearer-token convention client and server share: the call metadata, and where a client
finds its token (`--token-file`, else the environment)."""

from __future__ import annotations

import os
from pathlib import Path

from admin.errors import InvalidInput

TOKEN_ENV = "CONVEYOR_ADMIN_TOKEN"
"""Environment variable a client reads its bearer token from (never a flag: a token on the
command line would show in `ps` and shell history)."""


def token_from_env_or_file(token_file: str | None) -> str | None:
    """A client's bearer token: `token_file`'s contents when given, else $CONVEYOR_ADMIN_TOKEN.

    Surrounding whitespace is stripped; None when the variable is unset or empty. An unreadable or
    empty `token_file` is an InvalidInput, since it was asked for explicitly.
    """
    if token_file is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"cannot read token file {token_file!r}: {exc}", field="token_file", value=token_file
        ) from exc
    if not token:
        raise InvalidInput(
            f"token file {token_file!r} is empty", field="token_file", value=token_file
        )
    return token


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token`, for a stub call's `metadata=`."""
    return (("authorization", f"Bearer {token}"),)
