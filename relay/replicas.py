"""The start-up check of `--wait-replicas`: a master with fewer replicas than asked for would
fail every batch it serves."""

from __future__ import annotations

import logging

from relay.publisher import StreamPublisher

log = logging.getLogger(__name__)


async def warn_if_short(publisher: StreamPublisher, wanted: int) -> None:
    """Warn at start when a master has fewer replicas than --wait-replicas: every batch
    would fail (and be retried) until enough replicas connect."""
    try:
        found = await publisher.replicas()
    except Exception as exc:  # noqa: BLE001 - Redis away at start: batches tell later
        log.debug("counting Redis replicas failed: %r", exc)
        return
    for node, n in sorted(found.items()):
        if n < wanted:
            log.warning(
                "Redis %s has %d connected replica(s), fewer than --wait-replicas %d: batches "
                "it serves fail and stay in the outbox until enough replicas connect",
                node,
                n,
                wanted,
            )
