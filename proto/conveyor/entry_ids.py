"""Redis stream entry ids (`<milliseconds>-<sequence>`): parsed, checked, compared, their time,
and the id after one."""

from __future__ import annotations

import re
from typing import NamedTuple

from conveyor.replies import text

MAX_SEQUENCE = 2**64 - 1
"""Largest sequence part Redis gives an entry id; the next id starts the next millisecond."""

EXAMPLE = "1700000000000-0"
"""An entry id as people type it, for messages that say what one looks like."""

# Twenty digits hold any unsigned 64-bit number; [0-9] rather than \d, which takes digits of other
# scripts (int() reads them, Redis does not).
_STRICT_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


class EntryId(NamedTuple):
    """A stream entry id as numbers, so ids compare in stream order (as tuples do)."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, value: bytes | str) -> EntryId:
        """The id `value` names, as Redis replies carry it; a missing sequence part is 0."""
        ms, _, seq = text(value).partition("-")
        return cls(int(ms), int(seq or 0))

    @classmethod
    def parse_strict(cls, value: str) -> EntryId:
        """The id `value` spells as `<milliseconds>-<sequence>`, both parts ASCII decimal within
        64 bits; ValueError saying what an id looks like for anything else (signs, spaces, a
        missing part). For ids people give, before they reach Redis or the database."""
        match = _STRICT_RE.fullmatch(value)
        # Both parts are unsigned 64-bit numbers, as the sequence part is.
        if match is None or max(int(match[1]), int(match[2])) > MAX_SEQUENCE:
            shown = value[:64] + ("..." if len(value) > 64 else "")
            raise ValueError(
                f"invalid entry id {shown!r}: use <milliseconds>-<sequence>, e.g. {EXAMPLE}"
            )
        return cls(int(match[1]), int(match[2]))

    @property
    def time(self) -> float:
        """Unix time in seconds the entry was added at (its millisecond part)."""
        return self.ms / 1000

    def after(self) -> EntryId:
        """The smallest id greater than this one."""
        if self.seq == MAX_SEQUENCE:
            return EntryId(self.ms + 1, 0)
        return EntryId(self.ms, self.seq + 1)

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"
