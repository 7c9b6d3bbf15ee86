"""Process-wide set-up of the long-running `conveyor` processes (relay, consume): garbage
collection tuned for batch work, and signals handled the same way from the first check on."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""Signals asking for a graceful stop (exit 0)."""

_asked: list[signal.Signals] = []
_waiters: list[Callable[[], None]] = []


def tune_for_throughput() -> None:
    """Make the garbage collector cheap for batch work, once start-up imports are done.

    A batch holds thousands of small objects for milliseconds; with CPython's defaults they
    survive into older generations and trigger full collections that traverse every module's
    objects. Freezing what start-up created and collecting the young generation less often
    costs a little memory and saves about a fifth of the consumer's CPU.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def hold_signals() -> None:
    """From now until the running process installs its own handlers: SIGTERM and SIGINT ask for
    a stop, kept for `stop_requested()` and passed to whatever waits in `stopping_wakes()`;
    SIGHUP is logged and ignored (there is nothing to reload until the ops plane has read its
    tokens file, and a process without one never has anything to reload)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    signal.signal(signal.SIGHUP, _ignore)


def stop_requested() -> str | None:
    """The name of the signal that asked for a stop since `hold_signals()`, if one did."""
    return _asked[0].name if _asked else None


@contextmanager
def stopping_wakes(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` (from the signal handler) when a stop is asked for inside the block, or
    at once if one already was."""
    _waiters.append(callback)
    try:
        if _asked:
            callback()
        yield
    finally:
        _waiters.remove(callback)


def _stop(signum: int, _frame: FrameType | None) -> None:
    _asked.append(signal.Signals(signum))
    for callback in list(_waiters):
        callback()


def _ignore(signum: int, _frame: FrameType | None) -> None:
    log.info(
        "%s ignored: nothing to reload (a --tokens-file is read as the ops plane starts, and "
        "again on each SIGHUP after that)",
        signal.Signals(signum).name,
    )
