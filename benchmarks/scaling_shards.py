"""The shards scenario of benchmarks/scaling.py: one relay and one consumer member on a topic of
one stream on the services' Redis, then on the topic split into --partitions streams there, on a
throwaway Redis Cluster of one master and on one of --masters masters (benchmarks/
scaling_cluster.py). A member runs one worker per partition stream; the relay routes each row to
its partition's stream and splits each batch's XADDs by the master serving them."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager

import scaling_runs
from scaling_cluster import Cluster
from scaling_runs import Case, Measured, Services, ratio


@contextmanager
def clusters(masters: list[int]) -> Iterator[dict[int, str]]:
    """A running cluster of each size in `masters`: size -> its URL; all stopped on the way out."""
    with ExitStack() as stack:
        urls = {}
        for n in masters:
            print(f"starting a Redis Cluster of {n} master(s)", flush=True)
            urls[n] = stack.enter_context(Cluster(n)).url
        yield urls


def setups(
    a: argparse.Namespace, services: Services, urls: dict[int, str]
) -> list[tuple[str, int | None, str]]:
    """(name, partitions, Redis URL) of each place the topic's streams are measured in."""
    p = a.partitions
    out: list[tuple[str, int | None, str]] = [
        ("server", None, services.redis_url),
        ("server", p, services.redis_url),
    ]
    for n, url in urls.items():
        out.append((f"cluster, {n} master{'s' if n > 1 else ''}", p, url))
    return out


def cases(a: argparse.Namespace, services: Services, urls: dict[int, str]) -> list[Case]:
    out = []
    for name, partitions, url in setups(a, services, urls):
        for role, run in (
            ("relay", _relay(services, url, partitions, a.shard_events, a.batch)),
            ("consumer", _consumer(services, url, partitions, a.shard_events, a.batch)),
        ):
            out.append(Case("shards", 1, 2, run, setup=name, role=role, partitions=partitions))
    return out


def _relay(
    services: Services, url: str, partitions: int | None, events: int, batch: int
) -> Callable[[], Awaitable[Measured]]:
    return lambda: scaling_runs.relays(
        services, relays=1, events=events, batch=batch, redis_url=url, partitions=partitions
    )


def _consumer(
    services: Services, url: str, partitions: int | None, events: int, batch: int
) -> Callable[[], Awaitable[Measured]]:
    return lambda: scaling_runs.consumers(
        services,
        router="per_event",
        members=1,
        lanes=2,
        events=events,
        batch=batch,
        redis_url=url,
        partitions=partitions,
    )


def report(a: argparse.Namespace, todo: list[Case], yard: list[tuple[float, float]]) -> None:
    rows = [c for c in todo if c.scenario == "shards"]
    if not rows:
        return
    print(
        f"\none relay, one consumer member (per-event handler), {a.shard_events:,} events,"
        f" batch {a.batch}, by where the topic's streams live; medians of {a.rounds} rounds\n"
    )
    print(
        "| Redis | partitions | relay events/s | vs 1 stream on the server | vs yardstick relay"
        " | consumer events/s | vs 1 stream on the server | vs yardstick per-event consumer |"
    )
    print("|---" * 8 + "|")
    one = {c.role: c.rates for c in rows if c.partitions is None}
    bases = {"relay": [r[0] for r in yard], "consumer": [r[1] for r in yard]}
    for relay, consumer in zip(rows[::2], rows[1::2], strict=True):
        cells = [relay.setup, str(relay.partitions or 1)]
        for c in (relay, consumer):
            cells += [
                f"{statistics.median(c.rates):,.0f}",
                f"{ratio(c.rates, one[c.role]):.2f}x",
                f"{ratio(c.rates, bases[c.role]):.2f}x",
            ]
        print("| " + " | ".join(cells) + " |")
