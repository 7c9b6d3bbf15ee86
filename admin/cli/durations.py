"""Parsing the durations and points in time that people type on the command line."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

_DURATION_RE = re.compile(r"(?:(\d+(?:\.\d+)?)([smhdw]))+?")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


_USE = "use seconds (e.g. 90) or a number with s, m, h, d or w (e.g. 30m, 24h, 1d12h)"


def parse_duration(text: str, option: str | None = None) -> float:
    """Seconds in `text`: a plain number of seconds, or units like `90s`, `30m`, `24h`, `1d12h`;
    ValueError naming `option` (e.g. `--startup-timeout`) when given, else "duration"."""
    what = f"invalid {option or 'duration'} {text.strip()[:40]!r}"
    text = text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        parts = _DURATION_RE.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{what}: {_USE}") from None
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if math.isnan(value) or math.isinf(value):  # no limit at all is not a duration
        raise ValueError(f"{what}: use a finite duration, e.g. 90, 30m or 24h")
    if value < 0:
        raise ValueError(f"{what}: must be zero or more")
    return value


def format_duration(seconds: float) -> str:
    """`seconds` as people write it, for defaults in help and docs; `parse_duration` reads it back.

    Whole days from two days on (`30d`), whole hours (`1h`, `24h`), whole minutes from two minutes
    on (`5m`), else seconds (`60s`, `1.5s`): one day and one minute read better as `24h` and `60s`.
    """
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"invalid duration {seconds!r}: must be zero or more")
    for unit, least in (("d", 2), ("h", 1), ("m", 2)):
        count = seconds / _UNITS[unit]
        if count >= least and count.is_integer():
            return f"{int(count)}{unit}"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{Decimal(repr(seconds)):f}s"  # shortest exact digits, never an exponent


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time: ISO 8601 (`2026-11-29T05:00:00Z`; no zone means UTC) or a duration ago."""
    now = now or datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            ago = parse_duration(text)
        except ValueError:
            raise ValueError(
                f"invalid time {text!r}: use ISO 8601 (e.g. 2026-11-29T05:00:00Z) or how long "
                "ago (e.g. 2h, 1d)"
            ) from None
        try:
            return now - timedelta(seconds=ago)
        except OverflowError:  # a datetime cannot be that far back
            raise ValueError(f"invalid time {text!r}: it is before year 1") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment > now:
        raise ValueError(f"invalid time {text!r}: it is in the future")
    return moment
