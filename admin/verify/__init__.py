"""`conveyor verify`: an outbox window checked against each consumer group's ledger, dead letters
and topic streams, every event counted as applied, dead-lettered, in flight, unknown or lost."""

from __future__ import annotations

from admin.verify.groups import Selection
from admin.verify.report import GroupReport, Report, TopicState
from admin.verify.verdicts import Outcome, Verdict
from admin.verify.verifier import Progress, Request, verify

__all__ = [
    "GroupReport",
    "Outcome",
    "Progress",
    "Report",
    "Request",
    "Selection",
    "TopicState",
    "Verdict",
    "verify",
]
