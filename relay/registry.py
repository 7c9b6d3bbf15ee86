"""What the relay needs of the catalog: it keeps its process registered, so a sweep of the
deployment (`conveyor status --all`) finds it. The SQL lives with the rest of the catalog's
(`admin.catalog`); the relay knows only this protocol, and is given an implementation when it
is built."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from conveyor.layouts import LayoutSource


@dataclass(frozen=True, slots=True)
class RelayProcess:
    """A relay process as the registry shows it."""

    key_prefix: str
    name: str
    """`host-pid`: unique within the deployment."""
    schemas: tuple[str, ...]
    host: str
    pid: int
    grpc_addr: str | None
    """Where its ops plane answers; None when it runs without one (embedded)."""


def process_name() -> str:
    """The running relay's name, `host-pid`: in the registry and its connections' names."""
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return f"{safe or 'host'}-{os.getpid()}"[:100]


def this_process(key_prefix: str, schemas: Sequence[str], grpc_addr: str | None) -> RelayProcess:
    """The running process as a relay of the deployment with key prefix `key_prefix`."""
    host, pid = socket.gethostname(), os.getpid()
    return RelayProcess(key_prefix, process_name(), tuple(schemas), host, pid, grpc_addr)


class Registry(Protocol):
    """The relay registry, as a relay process uses it."""

    async def register(self, relay: RelayProcess) -> None:
        """Register (or re-register) the relay."""

    async def heartbeat(self, relay: RelayProcess) -> None:
        """Tell the registry the relay is alive."""

    async def unregister(self, relay: RelayProcess) -> None:
        """Remove the relay from the registry (a clean stop)."""


RegistryFactory = Callable[[asyncpg.Pool], Registry]
"""Builds the registry on the relay's own pool (e.g. `admin.catalog.RelayRegistry`)."""

LayoutsFactory = Callable[[asyncpg.Pool], LayoutSource]
"""Builds the source of the deployment's topic layouts on the relay's own pool (e.g.
`admin.catalog.layouts.CatalogLayouts`)."""
