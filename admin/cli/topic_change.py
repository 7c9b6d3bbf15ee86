"""`conveyor topic partition` / `unpartition`: check, then change a topic's layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from admin.catalog import layouts as catalog_layouts
from admin.cli.topic_state import (
    alive,
    layout_words,
    refusal,
    topic_state,
    unrecorded,
    unrecorded_refusal,
)
from conveyor import wire
from conveyor.layouts import PARK, Layout


@dataclass(slots=True)
class Outcome:
    """What a change did, or why it was refused."""

    topic: str
    before: Layout | None
    after: Layout | None
    changed: bool = False
    refused: str | None = None
    forced: list[str] = field(default_factory=list)
    """Refusals --force overrode."""
    carried: list[str] = field(default_factory=list)
    """Groups of the old streams created on the new ones, at their beginning."""

    def lines(self) -> list[str]:
        old, new = _streams(self.before), _streams(self.after)
        if not self.changed:
            return [f"topic {self.topic}: layout unchanged ({_describe(self.after)})"]
        out = [f"overrode: {reason}" for reason in self.forced]
        out.append(f"topic {self.topic}: {_describe(self.after)}")
        if old != new:
            out.append(
                f"{layout_words(old)} -> {layout_words(new)}: start the relays and consumers of "
                "the deployment now; relays still running stop (exit 9) and need a restart"
            )
        if self.carried:
            out.append(
                f"groups {', '.join(self.carried)} created on the new streams at their beginning "
                "(a group's trims never drop what another group has not read there)"
            )
        return out


def _streams(layout: Layout | None) -> int | None:
    """What decides a topic's streams: its partition count, None when unpartitioned."""
    return None if layout is None else layout.partitions


def _describe(layout: Layout | None) -> str:
    if layout is None:
        return "unpartitioned (one stream)"
    order = "ordered" if layout.ordered else "unordered"
    return (
        f"{layout.partitions} partitions, {order}, on dead letter {layout.on_dead_letter}, "
        f"layout version {layout.version}"
    )


async def _create_group(client: Any, stream: str, group: str) -> None:
    """Create `group` at the beginning of `stream` (and the stream), unless it exists."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise


async def change(
    servers: Any,
    prefix: str,
    topic: str,
    partitions: int | None,
    ordered: bool | None,
    on_dead_letter: str | None,
    *,
    force: bool,
) -> Outcome:
    """Set (partitions given) or remove (None) the topic's layout, unless refused."""
    async with servers:
        pool = servers.pool
        before = (await catalog_layouts.layouts(pool, prefix)).get(topic)
        outcome = Outcome(topic, before, before)
        if partitions is None and before is None:
            return outcome
        if partitions is not None and before is not None:
            same = (
                partitions == before.partitions
                and (ordered is None or ordered == before.ordered)
                and (on_dead_letter is None or on_dead_letter == before.on_dead_letter)
            )
            if same:
                return outcome
        old, new = _streams(before), partitions
        # One partition is not the plain stream either: {orders:0} is another key than {orders}.
        if old != new:
            running = await alive(pool, prefix)
            layouts_now = {} if before is None else {topic: before}
            state = await topic_state(servers.redis, prefix, topic, layouts_now)
            missing = {}
            for st in state.streams:
                if ids := await unrecorded(pool, servers.redis, st.keys):
                    missing[st.keys.dlq] = ids
            # Each check on its own, so --force can say what it overrode.
            reasons = [
                r
                for r in (
                    refusal(topic, old, new, running, ()),
                    refusal(topic, old, new, (), state.streams),
                    unrecorded_refusal(topic, old, new, missing),
                )
                if r is not None
            ]
            if reasons and not force:
                outcome.refused = reasons[0]
                return outcome
            outcome.forced = [
                r.removeprefix("refusing to change ").split("; --force")[0] for r in reasons
            ]
            # Every group of the old streams gets the new ones now, at 0, before any relay
            # publishes there: a group whose consumers start later would otherwise find the
            # entries its sibling groups' housekeepers trimmed, and --start would apply.
            outcome.carried = sorted({g.group for st in state.streams for g in st.groups})
            for keys in wire.topic_keys(topic, prefix, new):
                for group in outcome.carried:
                    await _create_group(servers.redis, keys.events, group)
                    await _create_group(servers.redis, keys.retry(group), group)
        if partitions is None:
            await catalog_layouts.remove_layout(pool, prefix, topic)
            outcome.after = None
        else:
            outcome.after = await catalog_layouts.set_layout(
                pool,
                prefix,
                topic,
                partitions=partitions,
                ordered=before.ordered if ordered is None and before else bool(ordered),
                on_dead_letter=on_dead_letter
                or (before.on_dead_letter if before is not None else PARK),
            )
        outcome.changed = True
        return outcome
