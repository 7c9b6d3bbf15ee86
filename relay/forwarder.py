"""The relay loop of one schema: claim a batch, publish it, commit; wake on NOTIFY or poll."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack

from tenacity import AsyncRetrying, RetryCallState

from conveyor import telemetry as t
from conveyor.outages import OUTAGE_LOG_INTERVAL
from conveyor.retry import pause
from relay.metrics import RelayMetrics
from relay.publisher import Publisher
from relay.settings import RelaySettings
from relay.spans import publish_traced, tracing_enabled
from relay.store import Outbox, Row

log = logging.getLogger(__name__)


class Forwarder:
    """Moves one schema's outbox rows to their streams, `concurrency` batches at a time.

    Batches are claimed one after another and their XADDs go out in claim order, so within one
    relay the stream order follows the outbox id order (except after a failed batch is retried).
    A batch that fails is rolled back and retried with jittered exponential backoff; its rows are
    never dropped.
    """

    def __init__(
        self,
        store: Outbox,
        publisher: Publisher,
        settings: RelaySettings,
        metrics: RelayMetrics,
        stopping: asyncio.Event,
    ) -> None:
        self.schema = store.schema
        self.store = store
        self._publisher = publisher
        self._settings = settings
        self._policy = settings.retry_policy
        self._metrics = metrics
        self._stopping = stopping
        self._wakeup = asyncio.Event()
        self._claim_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self.published = 0
        """Events published since start."""
        self.last_progress = time.monotonic()
        """When a batch last committed, or the forwarder started."""
        self.last_error: str | None = None
        self._failure_logged = 0.0
        self._tracing = tracing_enabled()

    def wake(self) -> None:
        """New rows may be there (NOTIFY, or shutdown): stop waiting and claim."""
        self._wakeup.set()

    async def run(self) -> None:
        """Forward until `stopping` is set; the batch in flight then finishes."""
        await asyncio.gather(*(self._work() for _ in range(self._settings.concurrency)))

    async def _work(self) -> None:
        while not self._stopping.is_set():
            n = await self._forward_retrying()
            if n < self._settings.batch_size and not self._stopping.is_set():
                await pause(self._wakeup, self._settings.poll_interval)

    async def _forward_retrying(self) -> int:
        retrying = AsyncRetrying(
            wait=lambda state: self._policy.delay(state.attempt_number),
            stop=lambda _state: self._stopping.is_set(),
            sleep=self._sleep,
            before_sleep=self._log_failure,
            reraise=True,
        )
        try:
            return await retrying(self.forward_once)
        except Exception:
            if self._stopping.is_set():
                return 0
            raise

    async def forward_once(self) -> int:
        """Claim, publish and commit one batch; return how many events it held."""
        rows: Sequence[Row] = ()
        try:
            async with AsyncExitStack() as stack:
                async with self._claim_lock:
                    self._wakeup.clear()
                    rows = await stack.enter_async_context(
                        self.store.claim(self._settings.batch_size)
                    )
                    if not rows:
                        return 0
                    await self._publish_lock.acquire()
                try:
                    counts = await self._publish(rows)
                finally:
                    self._publish_lock.release()
        except Exception:
            for topic, n in Counter(row[2] for row in rows).items():
                stream = self._publisher.stream_key(topic)
                self._metrics.publish_failed.add(n, {t.ATTR_STREAM: stream})
            raise
        for stream, n in counts.items():
            self._metrics.published.add(n, {t.ATTR_STREAM: stream})
        self.published += len(rows)
        self.last_progress = time.monotonic()
        self.last_error = None
        return len(rows)

    async def _publish(self, rows: Sequence[Row]) -> dict[str, int]:
        if not self._tracing:
            return await self._publisher.publish(rows)
        return await publish_traced(
            self._publisher.publish,
            rows,
            name=t.SPAN_RELAY_PUBLISH,
            attributes={t.ATTR_SCHEMA: self.schema},
        )

    async def _sleep(self, seconds: float) -> None:
        await pause(self._stopping, seconds)

    def _log_failure(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.last_error = f"{type(exc).__name__}: {exc}"
        # The first failure of a batch, then one every OUTAGE_LOG_INTERVAL: an outage retries
        # for as long as it lasts.
        now, level = time.monotonic(), logging.DEBUG
        if state.attempt_number == 1 or now - self._failure_logged >= OUTAGE_LOG_INTERVAL:
            self._failure_logged, level = now, logging.WARNING
        log.log(
            level,
            "relay batch failed, rows stay unpublished and will be retried: schema=%s attempt=%d "
            "retry_in=%.2fs error=%s",
            self.schema,
            state.attempt_number,
            state.upcoming_sleep,
            self.last_error,
        )
