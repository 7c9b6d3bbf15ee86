"""Connection URLs as people read them: with every password masked, and checked before use.

Every message and log line that shows a PostgreSQL or Redis URL shows `redact(url)`; a URL
that does not parse is shown the same way, so a typo never prints the secret beside it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"

_QUERY_SECRET_RE = re.compile(
    r"(?i)([?&;](?:password|passwd|pass|sslpassword|pwd)=)[^&;#]*",
)

POSTGRES_SCHEMES = ("postgresql", "postgres")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
"""redis+cluster:// and rediss+cluster:// force a Redis Cluster client (conveyor.redis_client)."""


def redact(url: str) -> str:
    """`url` with any password replaced by ***: the one in `user:password@` (all of it up to the
    last `@`, as drivers read it, so a password holding `@` is hidden whole) and any `password=`
    of the query string. A malformed URL (`postgresql//user:pw@host`) is masked the same way."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{MASK}{rest[at:]}"
    return scheme + sep + _QUERY_SECRET_RE.sub(rf"\g<1>{MASK}", rest)


def url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Why `url` cannot be a connection URL with one of `schemes` (the message shows it masked),
    or None when it can."""
    shown = redact(url)
    scheme, sep, _ = url.partition("://")
    if not sep:
        return f"{shown!r} is not a URL: use {schemes[0]}://[user[:password]@]host[:port]/..."
    if scheme.lower() not in schemes:
        return (
            f"{shown!r} has scheme {scheme[:20]!r}: use {' or '.join(s + '://' for s in schemes)}"
        )
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:  # urllib's words name the port or brackets, never the password
        return f"{shown!r} does not parse: {exc}"
    return None
