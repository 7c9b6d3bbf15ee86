"""Values as Redis replies and entry fields carry them, made into text and UUIDs."""

from __future__ import annotations

import uuid


def text(value: bytes | str) -> str:
    """A reply value as text: bytes from a client that does not decode replies, else as it is."""
    return value.decode() if isinstance(value, bytes) else value


def uuid_or_none(value: str | None) -> uuid.UUID | None:
    """The UUID `value` spells; None when it is empty, missing or not a UUID."""
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
