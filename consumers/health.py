"""A topic worker's health as it works: serving or why not, last progress, stopped for good."""

from __future__ import annotations

import logging
import time

from consumers.deliveries import describe
from consumers.status import WorkerStatus

log = logging.getLogger(__name__)


class Health:
    """Kept up to date by the worker and its applier; the ops plane reads `status()`."""

    __slots__ = ("_group", "_topic", "last_progress", "reason", "serving", "stopped")

    def __init__(self, topic: str, group: str) -> None:
        self._topic = topic
        self._group = group
        self.serving = False
        self.reason = "starting"
        self.last_progress = time.monotonic()
        """Monotonic time a batch last finished (or the worker started)."""
        self.stopped = False

    def progressed(self) -> None:
        """A batch finished, or there was nothing to do: serving."""
        self.serving, self.reason = True, ""
        self.last_progress = time.monotonic()

    def unhealthy(self, reason: str) -> None:
        """Not serving, for `reason`; logged when that is news."""
        if self.serving or self.reason != reason:
            log.warning(
                "consumer not serving: topic=%s group=%s reason=%s",
                self._topic,
                self._group,
                describe(reason),
            )
        self.serving, self.reason = False, reason

    def status(self) -> WorkerStatus:
        """A snapshot for the ops plane."""
        return WorkerStatus(
            self._topic, self.serving, self.reason, self.last_progress, self.stopped
        )
