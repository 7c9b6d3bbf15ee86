"""Where a consumer group starts on a stream it is created on (`--start`), and the one log line
saying where a group that already existed stands."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from consumers.streams import TopicStreams

log = logging.getLogger(__name__)


async def existing_group(streams: Iterable[TopicStreams]) -> str | None:
    """The first of `streams` (the streams of one topic, and those it had under another
    partition count) on which the group exists, or None."""
    for s in streams:
        if await s.standing() is not None:
            return s.keys.events
    return None


async def create_groups(
    streams: Iterable[TopicStreams], start: str, *, named: str = "", exists_on: str | None = None
) -> None:
    """Create each stream's group at `start` (an XGROUP CREATE id: `0`, `$` or an entry id; the
    retry streams at 0), logging once per stream whether it was created there or already
    existed, and then where it stands; `named` is the start as the operator gave it. With
    `exists_on` (a stream of the same topic where the group exists already, e.g. before its
    partition count changed) the group is not new and the streams it lacks get it at 0: the
    start point would skip events the relays published there since."""
    shown = named or start
    for s in streams:
        if exists_on is not None:
            if await s.ensure_groups(start="0"):
                log.info(
                    "group created: stream=%s group=%s start=%s not applied (the group exists "
                    "on %s, another stream of the topic) (id 0)",
                    s.keys.events,
                    s.group,
                    shown,
                    exists_on,
                )
                continue
        elif await s.ensure_groups(start=start):
            log.info(
                "group created: stream=%s group=%s start=%s (id %s)",
                s.keys.events,
                s.group,
                shown,
                start,
            )
            continue
        info = await s.standing() or {}
        log.info(
            "group exists, start=%s not applied (it applies only when the group is created): "
            "stream=%s group=%s last_delivered=%s pending=%s lag=%s",
            shown,
            s.keys.events,
            s.group,
            info.get("last-delivered-id", "?"),
            info.get("pending", "?"),
            info.get("lag", "?"),
        )
