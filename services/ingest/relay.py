"""The outbox relay: moves committed events from the ``outbox`` table to the event bus.

Every ingest process runs one. A round claims up to ``relay_batch`` rows with
``FOR UPDATE SKIP LOCKED`` (so several pods relay side by side without taking the same rows),
publishes them in one producer batch (key = execution id), and deletes them in the same
transaction once the bus acknowledged them (Kafka: idempotent producer, acks=all). If the process
dies between publish and commit the rows unlock and are published again: delivery is at least once,
and a duplicate carries the same event id, which consumers deduplicate on.

The relay sleeps until PostgreSQL NOTIFYs ``atas_outbox`` (a trigger fires on every outbox insert)
or the polling interval passes, whichever comes first. While Kafka (or PostgreSQL) fails, it backs
off exponentially with full jitter, capped, and catches up when the dependency returns; requests
keep committing into the outbox meanwhile. Backlog size and age are exported as metrics.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import asyncpg

from atas.common.bus import EventBus, EventPublisher, PublishError
from atas.common.logging import get_logger

from . import metrics
from .config import IngestConfig

log = get_logger(__name__)

CHANNEL = "atas_outbox"
_CLAIM = "SELECT id, event_key, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
_MARK_FAILED = "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])"
_BACKLOG = "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox"
# The backlog query counts rows; sampling it every few seconds keeps its cost negligible.
BACKLOG_SAMPLE_S = 5.0
# Time the in-flight round gets to finish when the process stops.
STOP_TIMEOUT_S = 30.0
_BACKOFF_BASE_S = 0.2


def backoff_delay(failures: int, cap: float, *, rng: Callable[[], float] = random.random) -> float:
    """Exponential back-off with full jitter: uniform in [0, min(cap, base * 2^(failures-1))]."""
    ceiling = min(cap, _BACKOFF_BASE_S * (2 ** min(failures - 1, 30)))
    return max(0.01, ceiling * rng())


class OutboxRelay:
    """Relays the outbox to ``bus`` until :meth:`stop`. Start it once per process."""

    def __init__(self, *, pool: Callable[[], asyncpg.Pool | None], dsn: str, bus: EventBus,
                 config: IngestConfig, client_id: str = "atas-ingest-relay"):
        self._pool = pool
        self._dsn = dsn
        self._bus = bus
        self._config = config
        self._client_id = client_id
        self._publisher: EventPublisher | None = None
        self._listener: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failures = 0
        self._last_sample = 0.0
        self.published = 0  # events acknowledged by the bus and deleted, since start

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Stop claiming, let the in-flight round finish (bounded), then stop the producer."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("relay round did not finish in time; cancelling it (its rows will be "
                            "relayed again)", timeout_s=STOP_TIMEOUT_S)
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        await self._close_listener()
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            try:
                await publisher.stop()
            except Exception as exc:  # noqa: BLE001 - shutting down; report and go on
                log.warning("producer stop failed", error=f"{type(exc).__name__}: {exc}")

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ loop
    async def _run(self) -> None:
        log.info("outbox relay started", topic=self._bus.topic, batch=self._config.relay_batch)
        while not self._stopping.is_set():
            await self._sample_backlog()
            try:
                await self._ensure_publisher()
                await self._ensure_listener()
                self._wake.clear()
                relayed = await self.relay_once()
            except Exception as exc:  # noqa: BLE001 - any failure: back off and retry
                self._failures += 1
                delay = backoff_delay(self._failures, self._config.relay_backoff_max_s)
                stage = "publish" if isinstance(exc, PublishError) else "database"
                metrics.RELAY_FAILURES.labels(stage).inc()
                # Log the first failure and then every tenth, not every attempt of a long outage.
                if self._failures == 1 or self._failures % 10 == 0:
                    log.warning("outbox relay failing; backing off", stage=stage, failures=self._failures,
                                delay_s=round(delay, 2), error=f"{type(exc).__name__}: {exc}"[:500])
                await self._sleep(delay, wake_on_notify=False)
                continue
            if self._failures:
                log.info("outbox relay recovered", after_failures=self._failures)
                self._failures = 0
            if relayed < self._config.relay_batch:
                await self._sleep(self._config.relay_poll_s, wake_on_notify=True)
        log.info("outbox relay stopped", published=self.published)

    async def _sleep(self, seconds: float, *, wake_on_notify: bool) -> None:
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if wake_on_notify:
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def relay_once(self) -> int:
        """Claim, publish and delete one batch; returns how many events were relayed."""
        pool = self._pool()
        if pool is None:
            raise RuntimeError("database pool not open")
        assert self._publisher is not None
        failure: PublishError | None = None
        async with pool.acquire() as conn:
            async with conn.transaction():
                rows = await conn.fetch(_CLAIM, self._config.relay_batch)
                if not rows:
                    return 0
                ids = [r["id"] for r in rows]
                started = time.perf_counter()
                try:
                    await self._publisher.publish([(r["event_key"], r["payload"]) for r in rows])
                except PublishError as exc:
                    failure = exc
                    await conn.execute(_MARK_FAILED, ids, str(exc)[:1000])
                else:
                    metrics.RELAY_PUBLISH_LATENCY.observe(time.perf_counter() - started)
                    await conn.execute(_DELETE, ids)
        if failure is not None:
            raise failure
        self.published += len(rows)
        metrics.RELAY_PUBLISHED.inc(len(rows))
        return len(rows)

    # ------------------------------------------------------------------ resources
    async def _ensure_publisher(self) -> None:
        if self._publisher is not None:
            return
        publisher = self._bus.publisher(self._client_id)
        try:
            await publisher.start()
        except Exception as exc:
            raise PublishError(f"producer start failed: {type(exc).__name__}: {exc}") from exc
        self._publisher = publisher

    async def _ensure_listener(self) -> None:
        """(Re)open the LISTEN connection. Failing here is not fatal: polling still relays."""
        if self._listener is not None and not self._listener.is_closed():
            return
        await self._close_listener()
        try:
            conn = await asyncpg.connect(self._dsn, timeout=5,
                                         server_settings={"application_name": self._client_id})
            await conn.add_listener(CHANNEL, self._on_notify)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("LISTEN connection unavailable; polling", error=f"{type(exc).__name__}: {exc}")
            return
        self._listener = conn

    async def _close_listener(self) -> None:
        if self._listener is not None:
            conn, self._listener = self._listener, None
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:  # noqa: BLE001 - the connection may already be gone
                conn.terminate()

    def _on_notify(self, *_args) -> None:
        self._wake.set()

    async def _sample_backlog(self) -> None:
        now = time.monotonic()
        if now - self._last_sample < BACKLOG_SAMPLE_S:
            return
        self._last_sample = now
        pool = self._pool()
        if pool is None:
            return
        try:
            async with pool.acquire() as conn:
                count, age = await conn.fetchrow(_BACKLOG)
        except Exception as exc:  # noqa: BLE001 - a metric must not stop the relay
            log.debug("backlog sample failed", error=f"{type(exc).__name__}: {exc}")
            return
        metrics.OUTBOX_BACKLOG.set(count)
        metrics.OUTBOX_AGE.set(float(age))
