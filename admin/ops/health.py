"""grpc.health.v1.Health for a Conveyor process, fed from the status snapshot."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from admin.ops.status import Snapshot

LIVENESS = "conveyor.liveness"
"""NOT_SERVING once shutdown has begun, or while the pipeline's event loop has been blocked for
longer than the stall timeout (a restart is then the remedy). A Redis outage makes components
NOT_SERVING (pods unready) but leaves liveness SERVING, so a dependency outage does not
restart-loop the process."""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def unknown_service_message(service: str, served: list[str]) -> str:
    """What Check says about a service this process does not serve: which ones it does."""
    shown = ", ".join(name or "'' (overall readiness)" for name in served)
    return f"unknown health service {service!r}; this process serves: {shown}"


class _Servicer(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc's health servicer, with a NOT_FOUND that names the services this process serves
    (the library's has no message at all)."""

    def __init__(self, served: Callable[[], list[str]]) -> None:
        super().__init__()
        self._served = served

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        served = self._served()
        if request.service not in served:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, unknown_service_message(request.service, served)
            )
        return await super().Check(request, context)


class Health:
    """The health servicer and the statuses it reports."""

    def __init__(
        self, *, liveness_limit: float = float("inf"), beat: Callable[[], float] = time.monotonic
    ) -> None:
        """`beat()` is when the pipeline's event loop last ran; liveness goes NOT_SERVING once
        that is more than `liveness_limit` seconds ago."""
        self._known: set[str] = set()
        self.servicer: Any = _Servicer(self.served)
        self._liveness_limit = liveness_limit
        self._beat = beat
        self._down = False

    def served(self) -> list[str]:
        """The service names Check answers for: overall readiness (""), liveness, then each
        component of the status snapshot once one has been published."""
        return [health.OVERALL_HEALTH, LIVENESS, *sorted(self._known)]

    async def start(self) -> None:
        """Not ready until the first snapshot; alive."""
        await self.servicer.set(health.OVERALL_HEALTH, _NOT_SERVING)
        await self.servicer.set(LIVENESS, _SERVING)

    async def publish(self, snapshot: Snapshot) -> None:
        """Set each component's status and the overall readiness from `snapshot`."""
        if self._down:  # a refresh that finishes after shutdown began changes nothing
            return
        for component in snapshot.components:
            serving = component.state != "NOT_SERVING"  # DEGRADED still does its work
            await self.servicer.set(component.name, _SERVING if serving else _NOT_SERVING)
            self._known.add(component.name)
        ready = snapshot.overall != "NOT_SERVING" and bool(snapshot.components)
        await self.servicer.set(health.OVERALL_HEALTH, _SERVING if ready else _NOT_SERVING)
        alive = time.monotonic() - self._beat() <= self._liveness_limit
        await self.servicer.set(LIVENESS, _SERVING if alive else _NOT_SERVING)

    async def shut_down(self) -> None:
        """Everything NOT_SERVING, first thing in a graceful shutdown."""
        self._down = True
        for name in (*self._known, health.OVERALL_HEALTH, LIVENESS):
            await self.servicer.set(name, _NOT_SERVING)
