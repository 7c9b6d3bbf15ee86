"""`--metrics-addr`: a relay and a consumer (`conveyor` processes) serve Prometheus text holding
every metric of the contract with the workload's counts, text promtool accepts; a taken or
malformed address stops the start with one line naming the option."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from google.protobuf.message import Message

from admin.cli.demo import SCHEMA_HEADER
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, enqueue_many
from tests.integration.conftest import Case
from tests.integration.metrics_support import served_metric_names, value
from tests.monitoring_kit import kit_metric_names
from tests.processes import run_conveyor, start_conveyor, stop, wait_until
from tests.unit.test_metrics_doc import CONTRACT

GROUP = "mailer"
TOPIC = "demo"  # the demo router's topic
CONSUME = ("consume", "--group", GROUP, "--topic", TOPIC, "--router", "admin.cli.demo:router")


@dataclass
class Endpoints:
    """Where the relay and the consumer serve their metrics, and the consumer's AdminService."""

    relay: str
    consumer: str
    target: str
    env: dict[str, str]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def addresses(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """(metrics URL, gRPC target) the process logged: it listens on port 0 for both."""
    assert proc.stdout is not None
    seen, url = [], None
    for line in proc.stdout:
        seen.append(line)
        if m := re.search(r"Prometheus metrics at (http://\S+/metrics)", line):
            url = m.group(1)
        if m := re.search(r"gRPC listening on ([\d.]+:\d+)", line):
            assert url is not None, "the metrics address is logged first:\n" + "".join(seen)
            return url, m.group(1)
    raise AssertionError("no addresses in the log:\n" + "".join(seen))


@pytest.fixture(name="endpoints")
async def fixture_endpoints(case: Case, catalog_cleanup: None) -> AsyncIterator[Endpoints]:
    """A relay and a consumer of the demo router on the case's schema, serving metrics."""
    for table in ("demo_mail (user_id text, kind text)", "demo_outage (user_id text)"):
        await case.pg.execute(f"CREATE TABLE {case.schema}.{table}")
    env = case.env | {"CONVEYOR_ALLOW_UNAUTHENTICATED": "true"}
    env["CONVEYOR_METRICS_ADDR"] = "127.0.0.1:0"
    relay = start_conveyor(["relay", "--schema", case.schema], env)
    consumer = start_conveyor(
        [*CONSUME, "--ledger-schema", case.schema, "--max-attempts", "3"],
        env,
    )
    try:
        relay_url, _ = addresses(relay)
        yield Endpoints(relay_url, *addresses(consumer), env)
    finally:
        stop(consumer)
        stop(relay)


async def produce(pg: asyncpg.Connection, schema: str, messages: list[Message]) -> None:
    headers = {SCHEMA_HEADER: schema}
    batch = [
        NewEvent(m, "user", m.user_id, topic=TOPIC, headers=headers)  # type: ignore[attr-defined]
        for m in messages
    ]
    async with pg.transaction():
        await enqueue_many(pg, batch, schema=schema)


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install prometheus (Debian's package has it)")
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_the_endpoints_serve_every_contract_metric_with_the_workload_counts(
    case: Case, endpoints: Endpoints
) -> None:
    stream = wire.Keys(TOPIC, case.prefix).events
    of_group = {"stream": stream, "group": GROUP}
    await case.pg.execute(f"INSERT INTO {case.schema}.demo_outage VALUES ('late')")
    welcomed = [events_pb2.UserRegistered(user_id=f"u{i}", email=f"u{i}@x.org") for i in range(10)]
    await produce(
        case.pg,
        case.schema,
        [
            *welcomed,
            events_pb2.UserRegistered(user_id="bad", email="no address"),  # rejected
            events_pb2.UserRegistered(user_id="late", email="late@x.org"),
            events_pb2.EmailVerified(user_id="late"),  # retried while its mailbox is down
        ],
    )

    async def consumer_has(name: str, at_least: float, **labels: str) -> bool:
        text = await asyncio.to_thread(scrape, endpoints.consumer)
        return (value(text, name, **labels) or 0) >= at_least

    async def settled() -> bool:  # the backlog is measured every 5 s, the status every second
        texts = await asyncio.gather(
            *(asyncio.to_thread(scrape, u) for u in (endpoints.relay, endpoints.consumer))
        )
        gauges = [value(texts[0], "outbox_backlog", schema=case.schema)]
        for text in texts:
            gauges += [
                value(text, n, **of_group) for n in ("consumer_lag_entries", "consumer_pending")
            ]
        return gauges == [0, 0, 0, 0, 0]

    async def finished(at_least: int) -> None:
        await wait_until(
            lambda: consumer_has("events_processed_total", at_least, **of_group),
            what=f"{at_least} events finished",
        )

    await finished(13)  # "late" verified: retried twice, then a dead letter (max_attempts 3)
    await case.pg.execute(f"DELETE FROM {case.schema}.demo_outage")
    reprocess = ["dlq", "reprocess", "--stream", TOPIC, "--reason", "max_attempts", "--yes"]
    done = await asyncio.to_thread(
        run_conveyor, [*reprocess, "--target", endpoints.target], endpoints.env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    await finished(14)
    await wait_until(settled, what="backlog, lag and pending at 0 on both endpoints")
    relay = await asyncio.to_thread(scrape, endpoints.relay)
    consumer = await asyncio.to_thread(scrape, endpoints.consumer)

    for role, text in (("relay", relay), ("consumer", consumer)):
        missing = set(CONTRACT[role]) - served_metric_names(text)
        assert not missing, f"the {role} does not serve {sorted(missing)}"
        promtool_check(text)
    # Every metric an alert rule or a dashboard panel of deploy/observability queries is served.
    unserved = kit_metric_names() - served_metric_names(relay) - served_metric_names(consumer)
    assert not unserved, f"the monitoring kit queries metrics nothing serves: {sorted(unserved)}"

    assert value(relay, "events_published_total", stream=stream) == 13
    assert value(relay, "events_publish_failed_total", stream=stream) == 0
    assert value(relay, "outbox_oldest_age_seconds", schema=case.schema) == 0
    assert value(relay, "conveyor_up", role="relay") == 1
    assert value(relay, "conveyor_serving", role="relay") == 1
    assert value(relay, "consumer_lag_seconds", **of_group) == 0
    count = {"stream": stream, "group": GROUP}
    assert value(consumer, "events_processed_total", result="success", **count) == 12
    assert value(consumer, "events_processed_total", result="dead_letter", **count) == 2
    assert value(consumer, "events_dlq_total", reason="rejected", **count) == 1
    assert value(consumer, "events_dlq_total", reason="max_attempts", **count) == 1
    assert value(consumer, "events_retried_total", **count) == 2
    assert value(consumer, "events_reprocessed_total", **count) == 1
    assert value(consumer, "events_consumed_total", **count) == 16  # 13, 2 retries, 1 reprocess
    assert value(consumer, "consumer_groups_lost_total", **count) == 0
    assert value(consumer, "conveyor_up", role="consumer", group=GROUP) == 1
    assert value(consumer, "conveyor_serving", role="consumer", group=GROUP) == 1
    assert (value(consumer, "event_end_to_end_latency_seconds_count", **count) or 0) >= 1
    assert (value(consumer, "event_processing_duration_seconds_count", **count) or 0) >= 1
    latency = value(consumer, "event_end_to_end_latency_seconds_sum", **count) or 0
    assert 0 < latency < 60, "seconds from the event's time to applied"
    for text in (relay, consumer):
        for dependency in ("postgres", "redis"):
            assert value(text, "dependency_up", dependency=dependency) == 1


def _held_port() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def test_a_taken_or_malformed_metrics_address_stops_the_start_naming_it(case: Case) -> None:
    env = case.env | {"CONVEYOR_ALLOW_UNAUTHENTICATED": "true"}
    with _held_port() as held:
        taken = f"127.0.0.1:{held.getsockname()[1]}"
        args = ["relay", "--schema", case.schema, "--metrics-addr", taken]
        done = await asyncio.to_thread(run_conveyor, args, env, 60)
    assert done.returncode == 8, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"conveyor: error: cannot listen on {taken} (address already in use)")
    assert "--metrics-addr HOST:PORT (or CONVEYOR_METRICS_ADDR)" in last
    env["CONVEYOR_METRICS_ADDR"] = "localhost"
    done = await asyncio.to_thread(run_conveyor, CONSUME, env, 60)
    assert done.returncode == 2, done.stderr
    assert "--metrics-addr (CONVEYOR_METRICS_ADDR)" in done.stderr.strip().splitlines()[-1]
