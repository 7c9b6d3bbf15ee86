"""The optional Prometheus scrape endpoint (`--metrics-addr`): the process's instruments as
Prometheus text at http://HOST:PORT/metrics, served from a thread of its own.

Its reader joins the process's one MeterProvider beside the InMemoryMetricReader that
AdminService.GetMetrics reads (and the OTLP exporter's, when configured), so all of them read the
same instruments. A scrape collects on the server's thread; observable gauges read values the
pipeline and the ops plane keep in memory, so a scrape does no I/O and never waits on the
pipeline's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from prometheus_client import CollectorRegistry, start_http_server

from admin.errors import AddressUnavailable
from admin.ops import observability, server
from admin.ops.settings import OpsSettings
from admin.ops.status_metrics import StatusGauges

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
"""Seconds closing the endpoint waits for its thread."""


class MetricsAddressUnavailable(AddressUnavailable):
    """The process cannot listen on its `--metrics-addr`."""


def check_bindable(addr: str) -> None:
    """Raise MetricsAddressUnavailable unless `addr` (host:port) can be bound now."""
    try:
        server.check_bindable(addr)
    except AddressUnavailable as exc:
        raise MetricsAddressUnavailable(
            address=exc.address, reason=exc.reason, in_use=exc.in_use
        ) from exc


class ScrapeEndpoint:
    """Serves the MeterProvider's instruments at http://`addr`/metrics: build it before
    `observability.configure(..., readers=[..., endpoint.reader])`, `start()` it once the checks
    passed, `await close()` it on shutdown."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.registry = CollectorRegistry()
        """A registry of its own: only Conveyor's instruments, and tests may run several."""
        self.reader = PrometheusMetricReader(registry=self.registry)
        self.port = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen and serve; returns the port (the chosen one when `addr` asked for 0).
        MetricsAddressUnavailable when the address cannot be bound."""
        host, _, port = self.addr.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            self._server, self._thread = start_http_server(int(port), host, registry=self.registry)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            in_use = "in use" in reason
            raise MetricsAddressUnavailable(
                address=self.addr, reason=reason, in_use=in_use
            ) from exc
        self.port = self._server.server_port
        shown = f"[{host}]" if ":" in host else host
        log.info("Prometheus metrics at http://%s:%d/metrics", shown, self.port)
        return self.port

    async def close(self) -> None:
        """Stop serving (off the event loop: the server notices within half a second)."""
        httpd, thread = self._server, self._thread
        self._server = self._thread = None
        if httpd is None or thread is None:
            return
        await asyncio.to_thread(_stop, httpd, thread)


def _stop(httpd: WSGIServer, thread: threading.Thread) -> None:
    httpd.shutdown()
    httpd.server_close()
    thread.join(CLOSE_TIMEOUT)


@dataclass(frozen=True, slots=True)
class ProcessMetrics:
    """The metric readers and status gauges of one relay or consumer process."""

    reader: InMemoryMetricReader
    """What AdminService.GetMetrics (`conveyor metrics`) reads."""
    gauges: StatusGauges
    """Lag, pending and up gauges, read from the ops plane's snapshot (OpsPlane `gauges`)."""
    endpoint: ScrapeEndpoint | None
    """The Prometheus scrape endpoint, with --metrics-addr."""

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Serve the scrape endpoint (if any) for the duration of the block."""
        if self.endpoint is None:
            yield
            return
        self.endpoint.start()
        try:
            yield
        finally:
            await self.endpoint.close()


def configure(
    service_name: str,
    ops: OpsSettings,
    *,
    role: str,
    key_prefix: str,
    group: str | None = None,
) -> ProcessMetrics:
    """Install the process's MeterProvider (observability.configure) with the readers it needs:
    GetMetrics' always, the scrape endpoint's with --metrics-addr, OTLP's when configured."""
    reader = InMemoryMetricReader()
    endpoint = ScrapeEndpoint(ops.metrics_addr) if ops.metrics_addr is not None else None
    readers: list[MetricReader] = [reader]
    if endpoint is not None:
        readers.append(endpoint.reader)
    observability.configure(service_name, readers=readers)
    dependencies = group is not None  # the relay exports its own readings (relay.metrics)
    gauges = StatusGauges(role=role, key_prefix=key_prefix, group=group, dependencies=dependencies)
    return ProcessMetrics(reader, gauges, endpoint)
