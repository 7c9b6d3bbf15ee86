"""Page tokens of dead-letter listings: opaque, signed, bound to one filter of one deployment."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Final

from admin.catalog.records import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, DeadLetterQuery, shown
from admin.errors import InvalidInput

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,400}\.[A-Za-z0-9_-]{43}")

_TOKEN_VERSION: Final = 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def encode_page_token(key: bytes, query: DeadLetterQuery, key_prefix: str, after_id: int) -> str:
    """The opaque, signed token for the page after the row with id `after_id`."""
    payload = json.dumps(
        {"v": _TOKEN_VERSION, "after": after_id, "q": query.fingerprint(key_prefix)},
        separators=(",", ":"),
    ).encode()
    return f"{_b64(payload)}.{_b64(_sign(key, payload))}"


def decode_page_token(key: bytes, query: DeadLetterQuery, key_prefix: str, token: str) -> int:
    """The row id a token continues after; InvalidInput(field="page_token") unless this server
    signed it for this same query."""
    try:
        if not _TOKEN_RE.fullmatch(token):
            raise ValueError("malformed")
        body, mac = token.split(".")
        payload = _unb64(body)
        # The signature is checked before the payload is parsed: nothing forged is ever read.
        if not hmac.compare_digest(_unb64(mac), _sign(key, payload)):
            raise ValueError("bad signature")
        data = json.loads(payload)
        after = data["after"]
        if data["v"] != _TOKEN_VERSION or type(after) is not int or after < 1:
            raise ValueError("unknown layout")
        if data["q"] != query.fingerprint(key_prefix):
            raise ValueError("issued for another filter")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidInput(
            f"invalid page token ({exc}); pass the next_page_token of the previous page of the "
            "same query",
            field="page_token",
            value=shown(token),
        ) from None
    return after


def checked_page_size(page_size: int) -> int:
    """`page_size`, 0 meaning the default; InvalidInput outside 0 to MAX_PAGE_SIZE."""
    if type(page_size) is not int or not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidInput(
            f"invalid page size {page_size!r}: use 1 to {MAX_PAGE_SIZE}, or 0 for "
            f"{DEFAULT_PAGE_SIZE}",
            field="page_size",
            value=str(page_size),
        )
    return page_size or DEFAULT_PAGE_SIZE
