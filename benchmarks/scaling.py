"""How throughput grows with consumer group members, relays, partitions and shards: real
`conveyor consume` and `conveyor relay` processes draining pre-filled streams and outboxes.

    python benchmarks/scaling.py [--rounds 3] [--only consumers,io,relays,shards]
                                 [--events 50000] [--batch 1000] [--members 1,2,4]
                                 [--io-events 4000] [--io-batch 100] [--io-wait 0.005]
                                 [--io-lanes 8] [--relays 1,3] [--partitions 6]
                                 [--masters 1,3] [--shard-events 20000] [--timeout 120]

Scenarios, run interleaved round by round so the machine's drift hits each alike:
  consumers  --members processes of one exactly-once group (`--consumer member-I`, 2 lanes each)
             drain --events entries with the per-event handler of `conveyor bench` (one INSERT
             through ctx.db): bound by the machine's CPU
  io         the same with a handler bound by I/O: it waits --io-wait seconds per event (as a
             call to another service does), then INSERTs; --io-events entries, batch --io-batch;
             plus one member with --io-lanes lanes (batch 25 per lane, at least --io-batch)
  relays     --relays `conveyor relay` processes on one schema drain --events outbox rows
  shards     one relay, then one member, with --shard-events events, the topic's streams on the
             services' Redis (one stream, then --partitions) and on throwaway Redis Clusters of
             --masters masters (redis-server on loopback ports, AOF everysec, no replicas)
Every run starts its processes behind a gate (a table lock on what they write first) and times
from the gate's opening to the last event applied (the group has acknowledged every entry, each
after its ledger row committed) or published. Each round also runs the yardstick
(ideal_pipeline.py --handler-insert --conns 2, --events rows, batch 1000) on the same servers.
Prints every run, then one table per scenario: medians, the ratio to one process and the ratio
to the yardstick (each the median of the rounds' ratios); never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import scaling_runs
import scaling_shards
from scaling_runs import Case, Measured, Services

from admin.bench import yardstick
from conveyor import database, wire

SCENARIOS = ("consumers", "io", "relays", "shards")


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas: {text!r}"
        )
    return values


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated")
    ap.add_argument("--events", type=int, default=50_000, help="consumers, relays, yardstick")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--members", type=_ints, default=[1, 2, 4])
    ap.add_argument("--io-events", type=int, default=4000)
    ap.add_argument("--io-batch", type=int, default=100)
    ap.add_argument("--io-wait", type=float, default=0.005, help="seconds per event")
    ap.add_argument("--io-lanes", type=int, default=8, help="lanes of the one-member extra row")
    ap.add_argument("--relays", type=_ints, default=[1, 3])
    ap.add_argument("--partitions", type=int, default=6, help="shards: the topic's partitions")
    ap.add_argument("--masters", type=_ints, default=[1, 3], help="shards: cluster sizes")
    ap.add_argument("--shard-events", type=int, default=20_000)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per run at most")
    return ap


def cases(a: argparse.Namespace, services: Services, urls: dict[int, str]) -> list[Case]:
    only = set(a.only.split(","))
    out = []
    if "consumers" in only:
        for m in a.members:
            run = _consumers(
                services,
                router="per_event",
                members=m,
                lanes=2,
                events=a.events,
                batch=a.batch,
                env=None,
            )
            out.append(Case("consumers", m, 2, run))
    if "io" in only:
        env = {"CONVEYOR_BENCH_IO_WAIT": str(a.io_wait)}
        shapes = [(m, 2, a.io_batch) for m in a.members]
        shapes.append((1, a.io_lanes, max(a.io_batch, 25 * a.io_lanes)))  # ~25 per lane
        for m, lanes, batch in dict.fromkeys(shapes):
            run = _consumers(
                services,
                router="io_wait",
                members=m,
                lanes=lanes,
                events=a.io_events,
                batch=batch,
                env=env,
            )
            out.append(Case("io", m, lanes, run, batch=batch))
    if "relays" in only:
        for r in a.relays:
            out.append(Case("relays", r, 0, _relays(services, r, a.events, a.batch)))
    if "shards" in only:
        out += scaling_shards.cases(a, services, urls)
    return out


def _consumers(
    services: Services,
    *,
    router: str,
    members: int,
    lanes: int,
    events: int,
    batch: int,
    env: dict[str, str] | None,
) -> Callable[[], Awaitable[Measured]]:
    return lambda: scaling_runs.consumers(
        services, router=router, members=members, lanes=lanes, events=events, batch=batch, env=env
    )


def _relays(
    services: Services, relays: int, events: int, batch: int
) -> Callable[[], Awaitable[Measured]]:
    return lambda: scaling_runs.relays(services, relays=relays, events=events, batch=batch)


async def measure(
    a: argparse.Namespace, services: Services, todo: list[Case]
) -> list[tuple[float, float]]:
    """Every round: the yardstick, then each case; the yardstick's (relay, consumer) rates of
    each round."""
    yard: list[tuple[float, float]] = []
    for i in range(a.rounds):
        print(f"-- round {i + 1}/{a.rounds}", flush=True)
        rates = await yardstick.both_rates(
            services.database_url, services.redis_url, a.events, a.batch
        )
        yard.append(rates)
        print(f"yardstick relay {rates[0]:,.0f}/s, per-event consumer {rates[1]:,.0f}/s")
        for case in todo:
            m = await case.run()
            case.rates.append(m.rate)
            note = "" if m.applied == m.events else f"  WARNING: {m.applied:,} of {m.events:,} done"
            print(f"{case.label}: {m.rate:,.0f}/s ({m.events:,} events in {m.seconds:.2f} s){note}")
            sys.stdout.flush()
    return yard


TITLES = {
    "consumers": "consumers, per-event handler (one INSERT per event),"
    " {events:,} events, batch {batch}",
    "io": "consumers, handler waiting {io_wait_ms:g} ms per event then one INSERT,"
    " {io_events:,} events, batch {io_batch}",
    "relays": "relays on one outbox, {events:,} rows, batch {batch}",
}


def report(a: argparse.Namespace, todo: list[Case], yard: list[tuple[float, float]]) -> None:
    relay, consumer = [r[0] for r in yard], [r[1] for r in yard]
    print(
        f"\nyardstick (ideal_pipeline.py --events {a.events} --batch {a.batch} --handler-insert"
        f" --conns 2), medians of {a.rounds}: relay {statistics.median(relay):,.0f}/s,"
        f" per-event consumer {statistics.median(consumer):,.0f}/s; ratios are medians of"
        " each round's ratio"
    )
    for scenario in SCENARIOS[:-1]:
        rows = [c for c in todo if c.scenario == scenario]
        if not rows:
            continue
        words = {**vars(a), "io_wait_ms": a.io_wait * 1000}
        print(f"\n{TITLES[scenario].format(**words)}; medians of {a.rounds} rounds\n")
        one = next((c for c in rows if c.processes == 1), rows[0])
        what = "relay" if scenario == "relays" else "per-event consumer"
        baseline = relay if scenario == "relays" else consumer
        head = ["relays"] if scenario == "relays" else ["members", "lanes each"]
        head += ["batch"] if scenario == "io" else []
        head += ["events/s", "rounds", "vs 1 process", f"vs yardstick {what}"]
        head += ["wait-bound ceiling"] if scenario == "io" else []
        print("| " + " | ".join(head) + " |")
        print("|---" * len(head) + "|")
        for c in rows:
            rate = statistics.median(c.rates)
            cells = [str(c.processes)] + ([] if scenario == "relays" else [str(c.lanes)])
            cells += [str(c.batch)] if scenario == "io" else []
            cells += [
                f"{rate:,.0f}",
                " / ".join(f"{r:,.0f}" for r in c.rates),
                f"{scaling_runs.ratio(c.rates, one.rates):.2f}x",
                f"{scaling_runs.ratio(c.rates, baseline):.2f}x",
            ]
            if scenario == "io":
                ceiling = c.processes * c.lanes / a.io_wait
                cells.append(f"{ceiling:,.0f}/s ({rate / ceiling:.2f}x)")
            print("| " + " | ".join(cells) + " |")
    scaling_shards.report(a, todo, yard)


def main() -> None:
    ap = parser()
    a = ap.parse_args()
    if unknown := set(a.only.split(",")) - set(SCENARIOS):
        ap.error(
            f"--only: no scenario {', '.join(sorted(unknown))} (there are {', '.join(SCENARIOS)})"
        )
    os.environ["CONVEYOR_GRPC_ADDR"] = "127.0.0.1:0"
    services = Services(
        os.environ.get("CONVEYOR_DATABASE_URL", database.DEFAULT_DATABASE_URL),
        os.environ.get("CONVEYOR_REDIS_URL", wire.DEFAULT_REDIS_URL),
        a.timeout,
    )
    started = time.monotonic()
    print(f"scaling, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs", flush=True)
    sizes = a.masters if "shards" in a.only.split(",") else []
    with scaling_shards.clusters(sizes) as urls:
        todo = cases(a, services, urls)
        yard = asyncio.run(measure(a, services, todo))
    report(a, todo, yard)
    print(f"\n{len(todo)} configurations, {a.rounds} rounds in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
