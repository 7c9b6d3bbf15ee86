"""An OTLP/gRPC receiver that counts what it is sent and keeps nothing: the far end of the
export-overhead benchmark, standing in for an OpenTelemetry Collector.

    python benchmarks/otlp_sink.py [--port 0]

Prints `listening 127.0.0.1:<port>` once serving; on SIGTERM or SIGINT prints
`received spans=<n> metric_points=<m>` and exits.
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2 as metrics_pb2,
)
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2_grpc as metrics_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2 as trace_pb2,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2_grpc as trace_grpc,
)


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0
        self.points = 0


class Traces(trace_grpc.TraceServiceServicer):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def Export(self, request: Any, context: Any) -> Any:
        n = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self.counts.lock:
            self.counts.spans += n
        return trace_pb2.ExportTraceServiceResponse()


class Metrics(metrics_grpc.MetricsServiceServicer):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def Export(self, request: Any, context: Any) -> Any:
        n = 0
        for r in request.resource_metrics:
            for s in r.scope_metrics:
                for m in s.metrics:
                    data = m.WhichOneof("data")
                    n += len(getattr(m, data).data_points) if data else 0
        with self.counts.lock:
            self.counts.points += n
        return metrics_pb2.ExportMetricsServiceResponse()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    counts = Counts()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_grpc.add_TraceServiceServicer_to_server(Traces(counts), server)
    metrics_grpc.add_MetricsServiceServicer_to_server(Metrics(counts), server)
    port = server.add_insecure_port(f"127.0.0.1:{a.port}")
    server.start()
    print(f"listening 127.0.0.1:{port}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(1).wait()
    print(f"received spans={counts.spans} metric_points={counts.points}", flush=True)


if __name__ == "__main__":
    main()
