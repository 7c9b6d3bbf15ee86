"""What OpenTelemetry export costs the relay and the consumer: the same benchmarks with export
off, on at the default sampling, and on with every event's trace sampled.

    python benchmarks/export_overhead.py [--events 100000] [--rounds 3]
                                         [--only relay,per-event,at-least-once]

Set-ups, run interleaved round by round so the machine's drift hits each alike:
  off      no OTEL_EXPORTER_OTLP_* variable: metrics only in memory (for GetMetrics), no tracing
  default  OTLP export to a local receiver (benchmarks/otlp_sink.py), default sampling: events
           enqueued outside a trace, so only roots at CONVEYOR_TRACE_SAMPLE_RATIO's default
  full     OTLP export, every event carrying the traceparent of a sampled producer trace and
           CONVEYOR_TRACE_SAMPLE_RATIO=1: a span per event in the relay and in the consumer
`relay` runs `conveyor bench`'s relay round (a real `conveyor relay` process draining a
pre-filled outbox); `per-event` and `at-least-once` its consumer rounds (a real `conveyor consume`
process draining a pre-filled stream). Prints each figure, the medians and their ratios to `off`;
never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from admin.bench import throughput
from admin.bench.harness import Bench
from conveyor import database, wire

HERE = Path(__file__).resolve().parent
SETUPS = ("off", "default", "full")
_OTEL_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED")


@contextmanager
def sink() -> Iterator[str]:
    """A running OTLP receiver; yields its endpoint URL, prints what it received at the end."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "otlp_sink.py")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening "):
        proc.kill()
        sys.exit(f"the OTLP receiver did not start: {line!r}")
    try:
        yield f"http://{line.split()[1]}"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        print(f"otlp receiver: {out.strip()}")


def environment(setup: str, endpoint: str) -> dict[str, str]:
    if setup == "off":
        return {}
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    if setup == "full":
        env["CONVEYOR_TRACE_SAMPLE_RATIO"] = "1"
    return env


def run_round(what: str, setup: str, n: int, endpoint: str) -> float:
    print(f"-- {what} [{setup}]", flush=True)
    bench = Bench(
        os.environ.get("CONVEYOR_DATABASE_URL", database.DEFAULT_DATABASE_URL),
        os.environ.get("CONVEYOR_REDIS_URL", wire.DEFAULT_REDIS_URL),
        traced=setup == "full",
        env=environment(setup, endpoint),
    )
    if what == "relay":
        rate = asyncio.run(throughput.relay_round(bench, n))
    else:
        rate = asyncio.run(throughput.consumer_round(bench, what, n))
    print(f"{what} [{setup}] {rate:.0f}/s ({n} events)")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="relay,per-event,at-least-once")
    a = ap.parse_args()
    for name in _OTEL_VARS:  # "off" must mean off, whatever this shell exports
        os.environ.pop(name, None)
    os.environ["CONVEYOR_GRPC_ADDR"] = "127.0.0.1:0"
    whats = a.only.split(",")
    rates: dict[tuple[str, str], list[float]] = {(w, s): [] for w in whats for s in SETUPS}
    with sink() as endpoint:
        for _ in range(a.rounds):
            for what in whats:
                for setup in SETUPS:
                    rates[what, setup].append(run_round(what, setup, a.events, endpoint))
    for what in whats:
        off = statistics.median(rates[what, "off"])
        parts = [f"off {off:.0f}/s"]
        for setup in SETUPS[1:]:
            m = statistics.median(rates[what, setup])
            parts.append(f"{setup} {m:.0f}/s ({m / off:.2f}x)")
        print(f"export {what}: " + ", ".join(parts) + f"  (medians of {a.rounds} rounds)")


if __name__ == "__main__":
    main()
