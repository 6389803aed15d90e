"""The outbox relay: moves committed events from the ``outbox`` table to the event bus.

Every ingest process runs one. A round claims up to ``relay_batch`` rows with
``FOR UPDATE SKIP LOCKED`` (so several pods relay side by side without taking the same rows),
publishes them in one producer batch (key = execution id), and deletes them in the same
transaction once the bus acknowledged them (Kafka: idempotent producer, acks=all). If the process
dies between publish and commit the rows unlock and are published again: delivery is at least once,
and a duplicate carries the same event id, which consumers deduplicate on. One relay publishes in
outbox order, so an execution's events keep their order on its partition; with several relays a
later batch may overtake an earlier one, which is what the per-execution ``seq`` is for.

The relay sleeps until PostgreSQL NOTIFYs ``atas_outbox`` (a trigger fires on every outbox insert)
or the polling interval passes, whichever comes first. While Kafka (or PostgreSQL) fails, it backs
off exponentially with full jitter, capped, and catches up when the dependency returns; requests
keep committing into the outbox meanwhile. Backlog size and age are exported as metrics; the size
(what the ingest HPA scales on) reads 0 while the relay cannot reach Kafka, since more ingest pods
cannot publish either, while the age keeps growing for the alert.

Kafka's idempotent producer never expires a batch: while the broker is away a publish simply does
not return. A round therefore waits ``relay_publish_timeout_s`` at most, then commits the claim
(releasing the rows, error recorded on them) and keeps that batch *in flight*: later rounds wait for
it instead of claiming (and re-sending) more, and delete its rows once Kafka acknowledges it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from atas.common.bus import EventBus, EventPublisher, PublishError
from atas.common.heartbeat import NO_BEAT, Heartbeat, idle
from atas.common.logging import get_logger

from . import metrics
from .config import IngestConfig

log = get_logger(__name__)

CHANNEL = "atas_outbox"
_CLAIM = "SELECT id, event_key, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
_BURY = """
WITH dead AS (DELETE FROM outbox WHERE id = ANY($1::bigint[]) RETURNING *)
INSERT INTO outbox_dead (id, event_id, event_key, payload, created_at, reason)
SELECT id, event_id, event_key, payload, created_at, $2 FROM dead
"""
# Larger than Kafka's default message limit (1 MiB with its overhead): such an event would be
# refused on every attempt and hold up everything behind it. The writer keeps events far smaller.
MAX_EVENT_BYTES = 1_000_000
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
_MARK_FAILED = "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])"
_BACKLOG = "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox"
# The backlog query counts rows; sampling it every few seconds keeps its cost negligible.
BACKLOG_SAMPLE_S = 5.0
# Time the in-flight round gets to finish when the process stops.
STOP_TIMEOUT_S = 30.0
_BACKOFF_BASE_S = 0.2
# Time the producer gets to flush when the process stops (Kafka down: it gives up, rows stay).
PRODUCER_STOP_TIMEOUT_S = 10.0


@dataclass
class _InFlight:
    publish: asyncio.Future
    ids: list[int]
    started: float


def backoff_delay(failures: int, cap: float, *, rng: Callable[[], float] = random.random) -> float:
    """Exponential back-off with full jitter: uniform in [0, min(cap, base * 2^(failures-1))]."""
    ceiling = min(cap, _BACKOFF_BASE_S * (2 ** min(failures - 1, 30)))
    return max(0.01, ceiling * rng())


class OutboxRelay:
    """Relays the outbox to ``bus`` until :meth:`stop`. Start it once per process."""

    def __init__(self, *, pool: Callable[[], asyncpg.Pool | None], dsn: str, bus: EventBus,
                 config: IngestConfig, client_id: str = "atas-ingest-relay", heartbeat: Heartbeat = NO_BEAT):
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
        self._heartbeat = heartbeat
        # Kafka does not acknowledge: the backlog is not a shortage of relays (see _sample_backlog).
        self._publish_failing = False
        self._last_sample = 0.0
        self._in_flight: _InFlight | None = None
        self.published = 0  # events acknowledged by the bus and deleted, since start

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Stop claiming, let the in-flight round finish (bounded), then stop the producer."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            if not done:
                log.warning("relay round did not finish in time; cancelling it (its rows will be "
                            "relayed again)", timeout_s=STOP_TIMEOUT_S)
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_listener()
        await self._drop_publisher()
        if self._in_flight is not None:
            self._in_flight.publish.cancel()
            await asyncio.gather(self._in_flight.publish, return_exceptions=True)
            self._in_flight = None

    # ------------------------------------------------------------------ loop
    async def _run(self) -> None:
        log.info("outbox relay started", topic=self._bus.topic, batch=self._config.relay_batch)
        while not self._stopping.is_set():
            self._heartbeat.beat()
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
                if stage == "publish" and not self._publish_failing:
                    self._publish_failing = True
                    metrics.OUTBOX_BACKLOG.set(0)
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
            if self._publish_failing:
                self._publish_failing = False
                self._last_sample = 0.0  # report the real backlog again at the next turn
            if relayed < self._config.relay_batch:
                await self._sleep(self._config.relay_poll_s, wake_on_notify=True)
                # Linger only under concurrency: when the last round already carried several
                # requests' events, waiting a little lets the next one carry more (fewer Kafka
                # round trips). When traffic is light, the first event after an idle spell goes out
                # at once; live monitors see it a linger sooner.
                if self._config.relay_linger_s and relayed > 1:
                    await self._sleep(self._config.relay_linger_s, wake_on_notify=False)
        log.info("outbox relay stopped", published=self.published)

    async def _sleep(self, seconds: float, *, wake_on_notify: bool) -> None:
        """Wait (beating: waiting on purpose is not being stuck) until stopped, or woken by NOTIFY."""
        if wake_on_notify:
            await idle(self._heartbeat, seconds, self._stopping, self._wake)
        else:
            await idle(self._heartbeat, seconds, self._stopping)

    async def relay_once(self) -> int:
        """Claim, publish and delete one batch; returns how many events were relayed.

        Raises PublishError when the bus refused the batch or did not acknowledge it in time."""
        pool = self._pool()
        if pool is None:
            raise RuntimeError("database pool not open")
        if self._in_flight is not None:
            return await self._settle_in_flight(pool)
        assert self._publisher is not None
        timeout = self._config.relay_publish_timeout_s
        async with pool.acquire() as conn:
            async with conn.transaction():
                rows = await conn.fetch(_CLAIM, self._config.relay_batch)
                if not rows:
                    return 0
                rows = await self._bury_oversized(conn, rows)
                if not rows:
                    return 0
                ids = [r["id"] for r in rows]
                started = time.perf_counter()
                publish = asyncio.ensure_future(
                    self._publisher.publish([(r["event_key"], r["payload"]) for r in rows]))
                try:
                    done, _ = await asyncio.wait({publish}, timeout=timeout)
                except asyncio.CancelledError:
                    publish.cancel()
                    raise
                error = publish.exception() if done else PublishError(
                    f"{len(ids)} events not acknowledged within {timeout} s (is Kafka reachable?)")
                if error is None:
                    await conn.execute(_DELETE, ids)
                else:
                    # Release the rows (commit, not roll back) with the error recorded on them.
                    await conn.execute(_MARK_FAILED, ids, str(error)[:1000])
                    if not done:
                        self._in_flight = _InFlight(publish, ids, started)
        if error is not None:
            if self._in_flight is None:
                # The producer refused the batch: its state is unknown, so the next round starts a
                # fresh one (a slow acknowledgement, by contrast, keeps the producer and its batch).
                await self._drop_publisher()
            raise error if isinstance(error, PublishError) else PublishError(str(error))
        self._relayed(len(ids), started)
        return len(ids)

    async def _bury_oversized(self, conn: asyncpg.Connection, rows: list) -> list:
        """Move events no broker would take to ``outbox_dead`` (same transaction); the rest go on."""
        big = [r for r in rows if len(r["payload"]) + len(r["event_key"]) > MAX_EVENT_BYTES]
        if not big:
            return rows
        ids = [r["id"] for r in big]
        await conn.execute(_BURY, ids, f"larger than {MAX_EVENT_BYTES} bytes")
        metrics.RELAY_DEAD.inc(len(ids))
        log.error("events too large for the bus moved to outbox_dead; their data is stored, the events "
                  "are not delivered", outbox_ids=ids, bytes=[len(r["payload"]) for r in big])
        dead = set(ids)
        return [r for r in rows if r["id"] not in dead]

    async def _settle_in_flight(self, pool: asyncpg.Pool) -> int:
        """Wait for the batch a previous round left in the producer; delete its rows once acknowledged."""
        flight = self._in_flight
        assert flight is not None
        done, _ = await asyncio.wait({flight.publish}, timeout=self._config.relay_publish_timeout_s)
        if not done:
            raise PublishError(f"still waiting for the bus to acknowledge {len(flight.ids)} events")
        self._in_flight = None
        error = flight.publish.exception()
        if error is not None:  # the rows are still in the outbox: the next round claims them again
            await self._drop_publisher()
            raise error if isinstance(error, PublishError) else PublishError(str(error))
        # Another relay may have published and deleted some of them meanwhile (a duplicate on the
        # topic, with the same event id); deleting what is left is all that remains to do.
        async with pool.acquire() as conn:
            await conn.execute(_DELETE, flight.ids)
        self._relayed(len(flight.ids), flight.started)
        return len(flight.ids)

    def _relayed(self, count: int, started: float) -> None:
        metrics.RELAY_PUBLISH_LATENCY.observe(time.perf_counter() - started)
        metrics.RELAY_PUBLISHED.inc(count)
        self.published += count

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

    async def _drop_publisher(self) -> None:
        if self._publisher is None:
            return
        publisher, self._publisher = self._publisher, None
        try:
            # Flushes what is in flight; with Kafka down that would wait forever. The rows of an
            # unacknowledged batch are still in the outbox, so giving up loses nothing.
            await asyncio.wait_for(publisher.stop(), PRODUCER_STOP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the producer is being discarded; report and go on
            log.warning("producer did not stop cleanly; its unacknowledged events stay in the outbox",
                        error=f"{type(exc).__name__}: {exc}")

    async def _ensure_listener(self) -> None:
        """(Re)open the LISTEN connection. Failing here is not fatal: polling still relays."""
        if self._listener is not None and not self._listener.is_closed():
            return
        await self._close_listener()
        conn = None
        try:
            conn = await asyncpg.connect(self._dsn, timeout=5,
                                         server_settings={"application_name": self._client_id})
            await conn.add_listener(CHANNEL, self._on_notify)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("LISTEN connection unavailable; polling", error=f"{type(exc).__name__}: {exc}")
            if conn is not None:  # connected, but LISTEN failed (e.g. a hot standby): don't leak it
                conn.terminate()
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
        # The HPA scales ingest on this. While Kafka does not acknowledge, more pods would only
        # add relays that fail the same way (up to the HPA's maximum, for the whole outage): 0.
        metrics.OUTBOX_BACKLOG.set(0 if self._publish_failing else count)
        metrics.OUTBOX_AGE.set(float(age))
