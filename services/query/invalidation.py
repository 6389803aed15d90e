"""Cache invalidation from the event stream: a consumer group that drops what events make stale.

Every pod of the query service joins group ``atas-query-invalidate`` on ``atas.events``; Kafka
gives each event to one of them, and since the cache is shared (Redis) one deletion serves all.
An event names an execution: its cached status and its project's cached first pages of recent
executions are dropped (and their fences bumped, so a fill racing with the event cannot store the
older answer). Offsets are committed only after the deletion succeeded: if Redis is unreachable the
batch is retried, never skipped. Trends are left to their TTL; the per-test answers (overview,
``tests/*``) are invalidated by the rollup worker instead, once it has applied an ingest batch
(``ResponseCache.rollups_applied``): an event arrives before the rollups have that batch, so
invalidating them here would only let the same partial answer be cached again.

The same code runs over the in-process ``MemoryBus`` and cache engine in ``atas dev``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec

from atas.common.bus import EventBus, Message
from atas.common.events import decode_event
from atas.common.heartbeat import NO_BEAT, Heartbeat, idle
from atas.common.logging import get_logger

from . import metrics
from .cache import CacheUnavailable, ResponseCache, recent_key, status_key

log = get_logger(__name__)

GROUP = "atas-query-invalidate"
POLL_TIMEOUT_S = 1.0
# Back-off between retries when Kafka or Redis is unreachable: quick first, then bounded.
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0


def stale_keys(messages: Iterable[Message]) -> tuple[list[str], int]:
    """Cache keys the events of a batch make stale, and how many messages could not be decoded.

    Pure: decoding problems are counted and skipped (an undecodable event can never invalidate
    anything, retrying it would only block the partition).
    """
    keys: dict[str, None] = {}
    bad = 0
    for message in messages:
        try:
            event = decode_event(message.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            bad += 1
            continue
        keys[status_key(event.project, event.execution_id)] = None
        keys[recent_key(event.project)] = None
    return list(keys), bad


class Invalidator:
    """Runs the consumer until ``stop`` is set; ``processed`` counts events handled (for tests)."""

    def __init__(self, bus: EventBus, cache: ResponseCache, *, group: str = GROUP, heartbeat: Heartbeat = NO_BEAT):
        self._heartbeat = heartbeat
        self._bus = bus
        self._cache = cache
        self._group = group
        self._subscription = None
        self.processed = 0

    def assigned(self) -> bool:
        return self._subscription is not None and self._subscription.assigned()

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        await idle(self._heartbeat, seconds, stop)

    async def run(self, stop: asyncio.Event) -> None:
        delay = RETRY_FIRST_S
        while not stop.is_set():
            self._heartbeat.beat()
            subscription = self._bus.subscription(self._group, client_id="atas-query")
            try:
                await subscription.start()
            except Exception as exc:  # noqa: BLE001 - Kafka down at start: retry, keep serving
                log.warning("invalidation consumer cannot start; retrying", error=str(exc), retry_s=delay)
                await subscription.stop()
                await self._pause(stop, delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._subscription = subscription
            delay = RETRY_FIRST_S
            try:
                await self._consume(subscription, stop)
            except Exception:  # noqa: BLE001 - rejoin rather than die: invalidation must go on
                log.exception("invalidation consumer failed; restarting it")
                await self._pause(stop, RETRY_FIRST_S)
            finally:
                self._subscription = None
                await subscription.stop()

    async def _consume(self, subscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._heartbeat.beat()
            messages = await subscription.poll(POLL_TIMEOUT_S)
            if not messages:
                continue
            keys, bad = stale_keys(messages)
            if bad:
                metrics.INVALIDATION_EVENTS.labels("undecodable").inc(bad)
                log.warning("skipped undecodable events", count=bad)
            if not await self._invalidate(keys, stop):
                return  # stopping before the deletion succeeded: leave the offsets uncommitted
            await subscription.commit()
            self.processed += len(messages)
            metrics.INVALIDATION_EVENTS.labels("processed").inc(len(messages) - bad)

    async def _invalidate(self, keys: list[str], stop: asyncio.Event) -> bool:
        delay = RETRY_FIRST_S
        while True:
            try:
                await self._cache.invalidate(keys)
            except CacheUnavailable as exc:
                log.warning("cannot invalidate cache entries; retrying before committing",
                            error=str(exc), keys=len(keys), retry_s=delay)
                if stop.is_set():
                    return False
                await self._pause(stop, delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            for key in keys:
                metrics.INVALIDATIONS.labels("status" if ":status:" in key else "recent").inc()
            return True
