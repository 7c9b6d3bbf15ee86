"""Redis stream entry ids (`<milliseconds>-<sequence>`): parsed, compared, and the id after one."""

from __future__ import annotations

from typing import NamedTuple

from conveyor.replies import text

MAX_SEQUENCE = 2**64 - 1
"""Largest sequence part Redis gives an entry id; the next id starts the next millisecond."""


class EntryId(NamedTuple):
    """A stream entry id as numbers, so ids compare in stream order (as tuples do)."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, value: bytes | str) -> EntryId:
        """The id `value` names, as Redis replies carry it; a missing sequence part is 0."""
        ms, _, seq = text(value).partition("-")
        return cls(int(ms), int(seq or 0))

    def after(self) -> EntryId:
        """The smallest id greater than this one."""
        if self.seq == MAX_SEQUENCE:
            return EntryId(self.ms + 1, 0)
        return EntryId(self.ms, self.seq + 1)

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"
