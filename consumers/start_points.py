"""Where a consumer group starts on a stream it is created on (`--start`), and the one log line
saying where a group that already existed stands."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from consumers.streams import TopicStreams

log = logging.getLogger(__name__)


async def existing_group(streams: Iterable[TopicStreams]) -> str | None:
    """The first of `streams` (the streams of one topic, and those it had under another
    partition count) on which the group exists, or None."""
    for s in streams:
        if await s.standing() is not None:
            return s.keys.events
    return None


async def _existing_per_topic(streams: Sequence[TopicStreams]) -> dict[str, str | None]:
    """Topic -> a stream of it where the group exists already, looking at the streams given
    and at those every other layout of the topic had (its one stream, or a partition 0)."""
    found: dict[str, str | None] = {}
    for s in streams:
        topic = s.keys.topic
        if topic in found:
            continue
        mine = [t for t in streams if t.keys.topic == topic]
        found[topic] = await existing_group([*mine, s.sibling(None), s.sibling(0)])
    return found


async def create_groups(
    streams: Iterable[TopicStreams], start: str, *, named: str = "", exists_on: str | None = None
) -> None:
    """Create each stream's group at `start` (an XGROUP CREATE id: `0`, `$` or an entry id; the
    retry streams at 0), logging once per stream whether it was created there or already
    existed, and then where it stands; `named` is the start as the operator gave it.

    A group is new only when it exists on no stream of the topic: when it exists on one (given
    as `exists_on`, or found on the topic's streams, its unpartitioned stream or its partition
    0, e.g. from before its partition count changed), the streams it lacks get it at 0, since
    the start point would skip events the relays published there since."""
    streams = list(streams)
    existing = {} if start == "0" else await _existing_per_topic(streams)
    shown = named or start
    for s in streams:
        there = exists_on or existing.get(s.keys.topic)
        if there is not None:
            if await s.ensure_groups(start="0"):
                log.info(
                    "group created: stream=%s group=%s start=%s not applied (the group exists "
                    "on %s, another stream of the topic) (id 0)",
                    s.keys.events,
                    s.group,
                    shown,
                    there,
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
