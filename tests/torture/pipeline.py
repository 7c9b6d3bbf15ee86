"""Real `conveyor relay` and `conveyor consume` processes of one torture scenario.

    async with Pipeline(deployment, log_dir, relays=2, groups=DEFAULT_GROUPS) as pipeline:
        await pipeline.start()                # every process; waits for each gRPC port
        await pipeline.kill("relay-0")        # SIGKILL (any signal: sig=...), waits for the exit
        pipeline.pause("eo-a-0"); pipeline.resume("eo-a-0")           # SIGSTOP / SIGCONT
        await pipeline.terminate("alo-c-0")   # SIGTERM; AssertionError unless it exits 0
        await pipeline.restart("relay-0")     # stop (SIGTERM if running) and start again
        await pipeline.health("eo-b-0")       # "SERVING", "NOT_SERVING", ... ("UNREACHABLE")
        pipeline.pid("eo-b-0")                # its process id (e.g. to measure its CPU)
        pipeline.assert_alive()               # AssertionError naming processes that died alone
    # every process is gone here (SIGCONT + SIGKILL), also when the block raised

Process names: `relay-<i>` for `relays` relays, `<group>-<i>` for each group's members. Each
process gets CONVEYOR_GRPC_ADDR=127.0.0.1:0, the deployment's key prefix and schema, and for
consumers the torture router (`tests.torture.router:router`, TORTURE_EFFECTS_SCHEMA set). The
output of every run of a process goes to `log_dir/<name>.log` (runs separated by a header line);
`tails()` gives the end of each, for failure reports; `grep(pattern)` the matching lines of
every log; `startup_times` how long each start took to listen.

What can be injected:
- URLs per process kind: `relay_database_url`, `relay_redis_url`, `consumer_database_url`,
  `consumer_redis_url` (default: the deployment's), e.g. a TCP proxy's port;
- the command prefix: `command` (default `.venv/bin/conveyor`), per group `Group.command`, per
  process `pipeline.specs[name].command` (e.g. `[python, "-m", "tests.torture.broken", MODE]`:
  the process is then `*command, "relay"|"consume", *args`);
- arguments: `relay_args` / `consume_args` (defaults `RELAY_ARGS` / `CONSUME_ARGS`: fast
  recovery), `Group.args`, or `specs[name].args`;
- environment: `env` (every process), `Group.env`, `specs[name].env`.
`specs` may be edited before `start` and between a stop and the next start or `restart`.

Children get PR_SET_PDEATHSIG=SIGKILL, so none outlives the test process even if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.torture.deployment import DEFAULT_GROUPS, Deployment, Group
from tests.torture.router import SCHEMA_ENV, TOPIC_ENV

ROOT = Path(__file__).resolve().parents[2]
CONVEYOR: tuple[str, ...] = (str(Path(sys.executable).with_name("conveyor")),)
ROUTER = "tests.torture.router:router"
RELAY_ARGS: tuple[str, ...] = ("--batch-size", "200", "--poll-interval", "0.2s")
CONSUME_ARGS: tuple[str, ...] = (
    "--batch-size",
    "200",
    "--claim-idle",
    "2s",
    "--retry-backoff",
    "0.05s",
    "--retry-backoff-max",
    "0.5s",
)
_LISTENING = re.compile(r"gRPC listening on (\S+):(\d+)")
_PR_SET_PDEATHSIG = 1


@dataclass
class ProcessSpec:
    """How one process is started: `[*command, *args]` with `env` over the test's environment."""

    name: str
    kind: Literal["relay", "consume"]
    group: Group | None
    command: list[str]
    args: list[str]
    env: dict[str, str]

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


@dataclass
class _Proc:
    spec: ProcessSpec
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    runs: int = 0
    run_offset: int = 0
    down_on_purpose: bool = True
    exits: list[int] = field(default_factory=list)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Pipeline:
    """Relays and consumer group members of one deployment, as real processes."""

    def __init__(
        self,
        deployment: Deployment,
        log_dir: Path,
        *,
        relays: int = 2,
        groups: Sequence[Group] = DEFAULT_GROUPS,
        command: Sequence[str] = CONVEYOR,
        relay_args: Sequence[str] = RELAY_ARGS,
        consume_args: Sequence[str] = CONSUME_ARGS,
        env: Mapping[str, str] | None = None,
        relay_database_url: str | None = None,
        relay_redis_url: str | None = None,
        consumer_database_url: str | None = None,
        consumer_redis_url: str | None = None,
    ) -> None:
        self.deployment = deployment
        self.groups = tuple(groups)
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        d = deployment
        base = {
            "CONVEYOR_KEY_PREFIX": d.key_prefix,
            "CONVEYOR_GRPC_ADDR": "127.0.0.1:0",
            "CONVEYOR_LOG_LEVEL": "info",
            **(env or {}),
        }
        self.specs: dict[str, ProcessSpec] = {}
        self._procs: dict[str, _Proc] = {}
        self.startup_times: dict[str, list[float]] = {}
        """Seconds each start of each process took to listen (from `start` being called)."""
        for i in range(relays):
            relay_env = base | {
                "CONVEYOR_DATABASE_URL": relay_database_url or d.database_url,
                "CONVEYOR_REDIS_URL": relay_redis_url or d.redis_url,
            }
            args = ["relay", "--schema", d.schema, *relay_args]
            self._add(ProcessSpec(f"relay-{i}", "relay", None, [*command], args, relay_env))
        for g in self.groups:
            for i in range(g.members):
                consumer_env = base | {
                    "CONVEYOR_DATABASE_URL": consumer_database_url or d.database_url,
                    "CONVEYOR_REDIS_URL": consumer_redis_url or d.redis_url,
                    SCHEMA_ENV: d.schema,
                    TOPIC_ENV: d.topic,
                    **g.env,
                }
                args = ["consume", "--group", g.name, "--router", ROUTER, "--mode", g.mode]
                args += ["--ledger-schema", d.schema, *consume_args, *g.args]
                cmd = [*(g.command or command)]
                self._add(ProcessSpec(f"{g.name}-{i}", "consume", g, cmd, args, consumer_env))

    def _add(self, spec: ProcessSpec) -> None:
        self.specs[spec.name] = spec
        self._procs[spec.name] = _Proc(spec, self.log_dir / f"{spec.name}.log")

    def names(self, kind: str | None = None, group: str | None = None) -> list[str]:
        """Process names, of one kind ("relay", "consume") or group when given."""
        return [
            s.name
            for s in self.specs.values()
            if (kind is None or s.kind == kind)
            and (group is None or (s.group is not None and s.group.name == group))
        ]

    def pid(self, name: str) -> int | None:
        """Process id of the current (or last) run of the process; None before its first start."""
        popen = self._procs[name].popen
        return None if popen is None else popen.pid

    def running(self, name: str) -> bool:
        popen = self._procs[name].popen
        return popen is not None and popen.poll() is None

    async def start(self, names: Sequence[str] | None = None, timeout: float = 60.0) -> None:
        """Start the named processes (default: all not running); wait until each listens."""
        todo = [n for n in (names or self.specs) if not self.running(n)]
        for name in todo:
            self._spawn(name)
        began = time.monotonic()
        deadline = began + timeout
        for name in todo:
            while self.grpc_address(name) is None:
                if not self.running(name) or time.monotonic() > deadline:
                    code = self._procs[name].popen.poll()  # type: ignore[union-attr]
                    state = f"exited {code}" if code is not None else f"not listening in {timeout}s"
                    raise AssertionError(f"{name} {state}:\n{self.tail(name)}")
                await asyncio.sleep(0.05)
            self.startup_times.setdefault(name, []).append(round(time.monotonic() - began, 2))

    def _spawn(self, name: str) -> None:
        proc = self._procs[name]
        spec = self.specs[name]
        proc.runs += 1
        with proc.log.open("ab") as log:
            proc.run_offset = log.tell()
            log.write(f"=== run {proc.runs}: {' '.join(spec.argv)}\n".encode())
            out: IO[bytes] = log
            proc.popen = subprocess.Popen(
                spec.argv,
                cwd=ROOT,
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - Popen runs in the loop thread
            )
        proc.down_on_purpose = False

    async def _wait_exit(self, name: str, timeout: float) -> int | None:
        popen = self._procs[name].popen
        if popen is None:
            return None
        deadline = time.monotonic() + timeout
        while popen.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return popen.poll()

    async def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30.0) -> int | None:
        """Send `sig` (the process is then down on purpose) and wait up to `timeout` for the
        exit; SIGKILL if it has not exited by then. Returns the exit code."""
        proc = self._procs[name]
        proc.down_on_purpose = True
        if not self.running(name):
            return proc.popen.returncode if proc.popen else None
        assert proc.popen is not None
        proc.popen.send_signal(sig)
        if sig != signal.SIGKILL:
            proc.popen.send_signal(signal.SIGCONT)  # a paused process cannot act on it
        code = await self._wait_exit(name, timeout)
        if code is None:
            proc.popen.kill()
            code = await self._wait_exit(name, 10)
        proc.exits.append(code if code is not None else -999)
        return code

    async def terminate(self, name: str, timeout: float = 30.0, expect: int | None = 0) -> int:
        """SIGTERM and wait; AssertionError (with the log's end) unless it exits `expect`."""
        code = await self.kill(name, signal.SIGTERM, timeout)
        if expect is not None and code != expect:
            raise AssertionError(f"{name} exited {code} after SIGTERM, not {expect}:\n"
                                 f"{self.tail(name)}")  # fmt: skip
        return -999 if code is None else code

    async def restart(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop the process with `sig` if it runs (SIGTERM must exit 0), then start it again."""
        if self.running(name):
            if sig == signal.SIGTERM:
                await self.terminate(name)
            else:
                await self.kill(name, sig)
        await self.start([name])

    def pause(self, name: str) -> None:
        """SIGSTOP: the process keeps its connections and locks, and does nothing."""
        self._signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT after `pause`."""
        self._signal(name, signal.SIGCONT)

    def _signal(self, name: str, sig: int) -> None:
        popen = self._procs[name].popen
        if popen is None or popen.poll() is not None:
            raise AssertionError(f"{name} is not running:\n{self.tail(name)}")
        popen.send_signal(sig)

    def grpc_address(self, name: str) -> str | None:
        """host:port the current run of the process listens on, from its log; None before."""
        proc = self._procs[name]
        try:
            with proc.log.open("rb") as log:
                log.seek(proc.run_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return None
        m = _LISTENING.search(text)
        return f"{m[1]}:{m[2]}" if m else None

    async def health(self, name: str, service: str = "", timeout: float = 2.0) -> str:
        """grpc.health.v1 Check of `service` ("" = overall readiness): SERVING, NOT_SERVING,
        SERVICE_UNKNOWN, or UNREACHABLE (no answer, not running or not listening yet)."""
        address = self.grpc_address(name)
        if address is None or not self.running(name):
            return "UNREACHABLE"
        return await asyncio.to_thread(_check_health, address, service, timeout)

    async def wait_serving(self, names: Sequence[str] | None = None, timeout: float = 30.0) -> None:
        """Wait until every named process (default: all) answers SERVING."""
        deadline = time.monotonic() + timeout
        for name in names or list(self.specs):
            while (status := await self.health(name)) != "SERVING":
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} is {status} after {timeout}s:\n{self.tail(name)}")
                await asyncio.sleep(0.2)

    def died(self) -> dict[str, int]:
        """Processes that exited without being told to: name -> exit code."""
        out = {}
        for name, proc in self._procs.items():
            if proc.popen is not None and not proc.down_on_purpose:
                code = proc.popen.poll()
                if code is not None:
                    out[name] = code
        return out

    def assert_alive(self) -> None:
        """AssertionError naming every process that exited on its own, with its log's end."""
        if died := self.died():
            raise AssertionError(
                "processes exited on their own: "
                + ", ".join(f"{n} ({c})" for n, c in died.items())
                + "\n"
                + "\n".join(self.tail(n) for n in died)
            )

    def tail(self, name: str, lines: int = 25) -> str:
        """The last `lines` lines of the process's log file, under a header naming it."""
        proc = self._procs[name]
        try:
            text = proc.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = ["(no log)"]
        return f"--- {name} ({proc.log}):\n" + "\n".join(text)

    def grep(self, pattern: str) -> dict[str, list[str]]:
        """Lines of every process's log (all runs) matching the regular expression `pattern`."""
        found: dict[str, list[str]] = {}
        regex = re.compile(pattern)
        for name, proc in self._procs.items():
            with contextlib.suppress(OSError):
                hits = [
                    ln
                    for ln in proc.log.read_text(errors="replace").splitlines()
                    if regex.search(ln)
                ]
                if hits:
                    found[name] = hits
        return found

    def tails(self, lines: int = 15) -> str:
        """`tail` of every process."""
        return "\n".join(self.tail(n, lines) for n in self.specs)

    async def close(self) -> None:
        """SIGCONT and SIGKILL every process still running; wait for each exit."""
        for name, proc in self._procs.items():
            if proc.popen is not None and proc.popen.poll() is None:
                proc.down_on_purpose = True
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGCONT)
                    proc.popen.kill()
                await self._wait_exit(name, 10)

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _check_health(address: str, service: str, timeout: float) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            return "SERVICE_UNKNOWN" if code == grpc.StatusCode.NOT_FOUND else "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
