"""Redis memory as the ops plane judges it from `INFO`: whether Redis refuses writes for want of
memory (at `maxmemory` with nothing it may evict), and whether its eviction policy can delete
Conveyor's streams. Both become reasons in every component's status; the policy is also logged
when the ops plane first reads it (at start) and whenever it changes."""

from __future__ import annotations

import logging

ALL_KEYS = "allkeys-"
"""Policies evicting any key (allkeys-lru, allkeys-lfu, allkeys-random): streams and their
consumer groups included."""
WITH_TTL = "volatile-"
"""Policies evicting only keys with a TTL: none of Conveyor's has one."""

_MIB = 1024 * 1024
REMEDY = (
    "free memory (let consumers acknowledge, so housekeeping trims the streams, cap them with "
    "`conveyor consume --max-stream-length`, delete other keys) or raise maxmemory"
)
"""What to do when Redis is out of memory, as reasons and log lines say it."""


def out_of_memory(used: int, not_counted: int, maxmemory: int) -> bool:
    """Redis refuses commands that add data (XADD, XGROUP CREATE, any command inside MULTI):
    what it counts against `maxmemory` (used memory less the replication and AOF buffers, as
    `INFO memory` reports them) is over it after it evicted what its policy let it."""
    return maxmemory > 0 and used - not_counted > maxmemory


def full_reason(used: int, maxmemory: int, policy: str, *, relay: bool) -> str:
    """Why a component cannot do all its work while Redis is out of memory."""
    what = (
        "events stay in the outbox until it has room"
        if relay
        else "dead letters cannot be written and wait pending (reads and acknowledgements work)"
    )
    return (
        f"redis out of memory: {used / _MIB:.1f} MiB used of maxmemory {maxmemory / _MIB:.1f} "
        f"MiB (maxmemory-policy {policy or 'unknown'}), it refuses new entries: {what}; {REMEDY}"
    )


def eviction_risk(policy: str, maxmemory: int) -> tuple[int, str] | None:
    """The log level and message for a policy that evicts keys, None when nothing is evicted
    (noeviction, or no maxmemory). Only an allkeys-* policy can delete streams (ERROR, and a
    reason in status); a volatile-* one evicts only keys with a TTL, which Conveyor never sets,
    and refuses writes as noeviction does once none is left (WARNING)."""
    if not maxmemory or not policy or policy == "noeviction":
        return None
    if policy.startswith(ALL_KEYS):
        return logging.ERROR, (
            f"redis misconfigured: maxmemory-policy {policy} with maxmemory "
            f"{maxmemory / _MIB:.1f} MiB evicts any key when memory runs out, so it can lose "
            "streams, their consumer groups and the events in them (an evicted stream shows "
            "only as CONSUMER GROUP LOST); set maxmemory-policy noeviction, so Redis refuses new "
            "entries instead and the outbox keeps them until memory is freed"
        )
    return logging.WARNING, (
        f"redis maxmemory-policy {policy} evicts keys with a TTL when memory runs out: "
        "Conveyor sets none, so its streams are not evicted, but keys of others sharing this "
        "Redis are; once none is left Redis refuses new entries as with noeviction"
    )


def policy_reason(policy: str, maxmemory: int) -> str | None:
    """A status reason for a policy that can lose streams (allkeys-*); None otherwise."""
    risk = eviction_risk(policy, maxmemory)
    return risk[1] if risk is not None and risk[0] >= logging.ERROR else None


class PolicyLog:
    """Logs an evicting policy when first read (at start) and whenever it or maxmemory changes,
    and the change back to one that evicts nothing."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._seen: tuple[str, int] | None = None
        self._risky = False

    def saw(self, policy: str, maxmemory: int) -> None:
        """Redis answered INFO with `policy` ('' when it would not say) and `maxmemory`."""
        if not policy or self._seen == (policy, maxmemory):
            return
        self._seen = (policy, maxmemory)
        risk = eviction_risk(policy, maxmemory)
        if risk is not None:
            self._log.log(*risk)
        elif self._risky:
            self._log.info(
                "redis maxmemory-policy is now %s (maxmemory %.1f MiB): it evicts no stream",
                policy,
                maxmemory / _MIB,
            )
        self._risky = risk is not None
