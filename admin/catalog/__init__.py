"""The catalog: dead letters, reprocess requests, audit, relay and consumer registry, reports.
The only code that speaks SQL to the catalog schema; `Catalog` is one deployment's view of it."""

from __future__ import annotations

from admin.catalog.deployment import Catalog
from admin.catalog.processes import RegisteredProcess, RelayRegistry
from admin.catalog.recording import ConsumerCatalog
from admin.catalog.records import AuditEntry, DeadLetterQuery, DeadLetterRecord, Progress

__all__ = [
    "AuditEntry",
    "Catalog",
    "ConsumerCatalog",
    "DeadLetterQuery",
    "DeadLetterRecord",
    "Progress",
    "RegisteredProcess",
    "RelayRegistry",
]
