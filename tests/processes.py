"""Starting real `conveyor` processes for process-level tests, and waiting on outcomes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

CONVEYOR = str(Path(sys.executable).with_name("conveyor"))


def start_conveyor(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `conveyor ARGS` with stdout/stderr captured; the caller stops it."""
    return subprocess.Popen(
        [CONVEYOR, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 20) -> str:
    """Send `sig`, wait for exit (SIGKILL after `timeout`), and return what the process printed."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def run_conveyor(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `conveyor ARGS` to completion."""
    return subprocess.run(
        [CONVEYOR, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    timeout: float = 30,
    interval: float = 0.05,
    what: str = "",
) -> None:
    """Poll `check` until it returns True; AssertionError naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(interval)
