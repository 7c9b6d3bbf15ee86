"""A topic worker's health as it works: serving or why not, last progress, stopped for good."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from consumers.deliveries import describe
from consumers.status import WorkerStatus

if TYPE_CHECKING:
    from conveyor.outages import Outage

log = logging.getLogger(__name__)


class Health:
    """Kept up to date by the worker and its applier; the ops plane reads `status()`."""

    __slots__ = (
        "_announced",
        "_group",
        "_postgres",
        "_topic",
        "last_progress",
        "reason",
        "serving",
        "stopped",
    )

    def __init__(self, topic: str, group: str, postgres: Outage | None = None) -> None:
        self._topic = topic
        self._group = group
        self._postgres = postgres
        """PostgreSQL's outage log: while it reports an outage, that says why, once."""
        self._announced = False
        """A WARNING said this worker is not serving; an INFO says when it is again."""
        self.serving = False
        self.reason = "starting"
        self.last_progress = time.monotonic()
        """Monotonic time a batch last finished (or the worker started)."""
        self.stopped = False

    def progressed(self) -> None:
        """A batch finished, or there was nothing to do: serving."""
        if self._announced:
            self._announced = False
            log.info("consumer serving again: topic=%s group=%s", self._topic, self._group)
        self.serving, self.reason = True, ""
        self.last_progress = time.monotonic()

    def unhealthy(self, reason: str) -> None:
        """Not serving, for `reason`; logged when that is news, at DEBUG while PostgreSQL's
        outage line says why, and at WARNING once that outage is over if the worker still is
        not serving (say Redis went away meanwhile and stays away)."""
        news = self.serving or self.reason != reason
        outage = self._postgres is not None and self._postgres.since is not None
        if news or not (outage or self._announced):
            self._announced = self._announced or not outage
            log.log(
                logging.DEBUG if outage else logging.WARNING,
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
