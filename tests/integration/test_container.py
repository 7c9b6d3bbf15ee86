"""The image of the Dockerfile runs Conveyor: built with podman from a base made here
(`--build-arg BASE_IMAGE=...`), it migrates a schema, runs a relay and a consumer on the host
network that carry events end to end, reports healthy through its HEALTHCHECK, unhealthy when its
Redis goes away, and drains on SIGTERM (`podman stop`) with exit 0. Skips, saying why, where
podman cannot run."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from admin.cli import demo
from relay import enqueue_many
from tests.integration.container_support import Podman, PodmanUnavailable
from tests.servers import RedisServer, free_port

# A first run on a machine makes the base image (debootstrap, ~1.5 min) and builds from nothing
# (~1 min); later runs reuse the base and the build's layers (~20 s in all).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EVENTS = 30


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    runtime = Podman(tmp_path_factory.mktemp("podman"))
    try:
        runtime.check_usable()
    except PodmanUnavailable as exc:
        pytest.skip(f"no container runtime answers: {exc}")
    yield runtime
    # The host's /dev/null must come out of image builds and container runs as it went in: every
    # later test (initdb, shells) writes to it. Put back and fail loudly if not.
    if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
        os.remove("/dev/null")
        os.mknod("/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod("/dev/null", 0o666)
        pytest.fail("the host's /dev/null was not a character device after the container test")


@pytest.fixture
def containers(podman: Podman) -> Iterator[list[str]]:
    """Names of the containers a test starts; removed afterwards (the images stay, cached)."""
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)


def _wait(
    what: str, done: Callable[[], bool], logs: Callable[[], str], timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}\n{logs()[-4000:]}")
        time.sleep(0.5)


def _healthy(podman: Podman, name: str) -> bool:
    return podman("healthcheck", "run", name, check=False).returncode == 0


def _expected_rows() -> int:
    """The demo mailer's rows for one run: a welcome and a confirmation per user whose address
    is one (the broken ones become dead letters)."""
    users = (EVENTS + 2) // 3
    return 2 * sum(1 for k in range(users) if not demo.broken(k))


async def _produce(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"CREATE TABLE {schema}.demo_mail (user_id text NOT NULL, kind text NOT NULL, "
            "sent_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(f"CREATE TABLE {schema}.demo_outage (user_id text PRIMARY KEY)")
        async with conn.transaction():
            run = uuid.uuid4().hex[:6]
            await enqueue_many(conn, demo.demo_events(run, EVENTS, schema), schema=schema)
    finally:
        await conn.close()


def _mail_rows(database_url: str, schema: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.demo_mail"))
        finally:
            await conn.close()

    return asyncio.run(count())


def test_image_carries_events_reports_health_and_drains_on_sigterm(
    podman: Podman,
    containers: list[str],
    database_url: str,
    schema: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    image = podman.build()
    run_id = uuid.uuid4().hex[:8]
    with RedisServer() as redis:
        env = {
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_REDIS_URL": redis.url,
            "CONVEYOR_KEY_PREFIX": key_prefix,
            "CONVEYOR_SCHEMA": schema,
            "CONVEYOR_ALLOW_UNAUTHENTICATED": "true",
            "CONVEYOR_STARTUP_TIMEOUT": "60s",
        }
        flags = [f"--env={k}={v}" for k, v in env.items()]
        migrate = podman("run", "--rm", "--network", "host", "--no-healthcheck", *flags, image,
                         "migrate", "up")  # fmt: skip
        assert migrate.returncode == 0
        asyncio.run(_produce(database_url, schema))

        def start(role: str, *args: str) -> tuple[str, str]:
            name = f"conveyor-test-{role}-{run_id}"
            addr = f"127.0.0.1:{free_port()}"
            containers.append(name)
            podman("run", "--detach", "--name", name, "--network", "host", *flags,
                   f"--env=CONVEYOR_GRPC_ADDR={addr}", f"--env=CONVEYOR_TARGET={addr}",
                   image, *args)  # fmt: skip
            return name, addr

        relay, _ = start("relay", "relay")
        consumer, _ = start(
            "consumer",
            "consume",
            "--log-format", "json",
            "--group", "mailer", "--topic", demo.TOPIC,
            "--router", "admin.cli.demo:router", "--ledger-schema", schema,
        )  # fmt: skip

        def logs() -> str:
            return "\n".join(f"--- {n}:\n{podman.logs(n)}" for n in (relay, consumer))

        _wait(
            "the consumer container applies every event the relay container published",
            lambda: _mail_rows(database_url, schema) == _expected_rows(),
            logs,
        )
        _wait("relay HEALTHCHECK healthy", lambda: _healthy(podman, relay), logs)
        _wait("consumer HEALTHCHECK healthy", lambda: _healthy(podman, consumer), logs)

        podman("stop", "--time", "30", relay, timeout=60)  # SIGTERM, then SIGKILL after 30 s
        assert podman.state(relay) == ("exited", 0), podman.logs(relay)
        assert "relay stopped after the batches in flight" in podman.logs(relay)

        redis.stop()  # the consumer's Redis goes away
        _wait("consumer HEALTHCHECK unhealthy", lambda: not _healthy(podman, consumer), logs)
        redis.start()
        _wait("consumer healthy again once Redis is back", lambda: _healthy(podman, consumer), logs)

        podman("stop", "--time", "30", consumer, timeout=60)
        assert podman.state(consumer) == ("exited", 0), podman.logs(consumer)
        lines = [json.loads(line) for line in podman.logs(consumer).splitlines() if line]
        assert any(
            line["message"].startswith("consumer stopped after the batch in flight")
            for line in lines
        ), lines[-5:]
    size = podman.size(image)
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in podman.timings.items())
    took = time.monotonic() - started
    print(f"\nimage {image}: {size / 2**20:.0f} MiB; {timings}; test {took:.1f} s")
