"""Throwaway PostgreSQL and Redis servers that fault tests can stop, kill and restart."""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

StopMode = Literal["smart", "fast", "immediate"]

_live: set[_Server] = set()


class ServerError(RuntimeError):
    """A throwaway server's binary is missing, or the server did not start or stop in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path.name})"


def _wait_until(ready: Callable[[], bool], alive: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        if not alive() or time.monotonic() > deadline:
            state = "exited" if not alive() else "did not answer within 30 s"
            raise ServerError(f"{what} {state}; the end of {log}:\n{_tail(log)}")
        time.sleep(0.05)


class _Server:
    """What both servers share: a free port kept across restarts, a temp dir, closing on exit."""

    def __init__(self, prefix: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self._closed = False
        _live.add(self)

    @property
    def url(self) -> str:
        """The URL clients connect to; the same across restarts."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server (no-op if running) and wait until it answers."""
        raise NotImplementedError

    def _terminate(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the server at once and delete its directory; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        _live.discard(self)
        try:
            self._terminate()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(_Server):
    """A `redis-server` on a free loopback port in its own temp dir.

    With `appendonly=True` every write is appended and fsynced before the reply (appendonly yes,
    appendfsync always), so acknowledged writes survive SIGKILL; otherwise nothing goes to disk.
    `config` adds redis-server arguments, e.g. `("--maxmemory", "2mb")`, kept across restarts.
    """

    def __init__(self, *, appendonly: bool = False, config: Sequence[str] = ()) -> None:
        bindir = os.environ.get("CONVEYOR_REDIS_BINDIR")
        binary = shutil.which("redis-server", path=bindir)
        if binary is None:
            where = bindir or "PATH"
            raise ServerError(
                f"redis-server not found in {where}: install it (apt-get install redis-server)"
            )
        self._binary = binary
        self.appendonly = appendonly
        self.config = tuple(config)
        self._proc: subprocess.Popen[bytes] | None = None
        super().__init__("conveyor-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the running server (SIGSTOP, SIGCONT...) without waiting for anything."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    @property
    def running(self) -> bool:
        """The server process is alive (started and not stopped or killed)."""
        return self._running()

    def _answers(self) -> bool:
        # Our own log line first: another server that holds the port would answer PING too.
        if "Ready to accept connections" not in _tail(self.dir / "redis.log", 1000):
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")  # "-LOADING" while reading the AOF
        except OSError:
            return False

    def start(self) -> None:
        if self._running():
            return
        disk = ["yes", "--appendfsync", "always"] if self.appendonly else ["no"]
        log = self.dir / "redis.log"
        log.unlink(missing_ok=True)  # so that the readiness check reads this run's lines only
        args = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.dir), "--save", "", "--appendonly", *disk, "--logfile", str(log)]
        args += self.config
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        _wait_until(self._answers, self._running, f"redis-server on port {self.port}", log)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM; nothing is saved beyond the AOF) and wait for the exit."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Crash the server with SIGKILL and wait for the exit."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Stop if running, then start again on the same port and dir (loading the AOF if any)."""
        self.stop()
        self.start()

    def _terminate(self) -> None:
        self.kill()


def _pg_bindir() -> Path:
    """The directory holding initdb and pg_ctl: CONVEYOR_PG_BINDIR, else the newest found."""
    if override := os.environ.get("CONVEYOR_PG_BINDIR"):
        candidates = [override]
    else:
        debian = glob.glob("/usr/lib/postgresql/*/bin")
        debian.sort(key=lambda d: [int(x) for x in Path(d).parent.name.split(".") if x.isdigit()])
        candidates = debian[::-1]
        if shutil.which("pg_config"):
            out = subprocess.run(
                ["pg_config", "--bindir"], check=False, capture_output=True, text=True
            )
            candidates.append(out.stdout.strip())
        if initdb := shutil.which("initdb"):
            candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise ServerError(
        "initdb not found (looked in "
        f"{override or '/usr/lib/postgresql/*/bin, pg_config --bindir, PATH'}): "
        "install PostgreSQL (apt-get install postgresql) or set CONVEYOR_PG_BINDIR"
    )


class PostgresServer(_Server):
    """A PostgreSQL cluster made by initdb in a temp dir, on a free loopback port, trust auth.

    Runs as the postgres user when we are root (PostgreSQL refuses root). fsync is off unless
    `fsync=True`: a process crash or `stop("immediate")` still keeps every committed row, since
    commits still write the WAL synchronously; only an OS crash could lose them.
    """

    def __init__(self, *, fsync: bool = False) -> None:
        self._bin = _pg_bindir()
        self._as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerError(
                    "running as root needs a postgres user to run PostgreSQL as"
                ) from None
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.fsync = fsync
        self._started = False
        super().__init__("conveyor-pg-")
        if owner is not None:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self._data = self.dir / "data"
        self._log = self.dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        cmd = [*self._as_user, str(self._bin / tool), *args]
        done = subprocess.run(cmd, check=False, cwd="/", capture_output=True, text=True, timeout=90)
        if done.returncode != 0:
            raise ServerError(
                f"{tool} {' '.join(args[:2])} failed ({done.returncode}): "
                f"{done.stdout}{done.stderr}\nthe end of {self._log}:\n{_tail(self._log)}"
            )

    def _initdb(self) -> None:
        args = ["-D", str(self._data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        self._pg("initdb", *args, *([] if self.fsync else ["--no-sync"]))
        durable = "on" if self.fsync else "off"
        settings = [
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = ''",  # TCP only: no socket path length limits
            f"fsync = {durable}",
            f"full_page_writes = {durable}",  # torn pages matter only with fsync
        ]
        with (self._data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")

    def start(self) -> None:
        if self._started:
            return
        if not (self._data / "PG_VERSION").exists():
            self._initdb()
        opts = ["-D", str(self._data), "-l", str(self._log), "-w", "-t", "30"]
        self._pg("pg_ctl", "start", *opts, "-o", f"-p {self.port}")
        self._started = True

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop and wait: "fast" disconnects clients cleanly, "immediate" is like a crash."""
        if self._started:
            self._pg("pg_ctl", "stop", "-D", str(self._data), "-m", mode, "-w", "-t", "30")
            self._started = False

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop with `mode` if running, then start again on the same port and data dir."""
        self.stop(mode)
        self.start()

    def _terminate(self) -> None:
        try:
            self.stop("immediate")
        except ServerError:
            with contextlib.suppress(OSError, ValueError, IndexError):  # already gone
                pid = int((self._data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)


@atexit.register
def _close_all() -> None:
    """The safety net: no server outlives the test process, even if a test forgot to close it."""
    for server in list(_live):
        server.close()
