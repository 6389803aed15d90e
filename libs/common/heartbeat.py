"""Heartbeats of background loops, so ``/healthz`` can tell a stuck loop from an idle one.

Each loop (outbox relay, partition upkeep, rollup worker, cache invalidator, stream bridge, ticker,
Pub/Sub) beats once per turn, and while it waits on purpose (a poll interval, a back-off while
Kafka is down) it beats through :func:`idle`. A loop is *stuck* when a single step does not come
back: a query or a client call without a bound, a dead lock, a busy thread. Every call the loops
make to PostgreSQL, Redis or Kafka is bounded well below the stall bound (the longest, the relay's
publish wait, is 15 s plus a 30 s back-off), so a beat older than ``HEALTH_LOOP_STALL_SECONDS``
(default 120 s) means the loop stopped making progress, and the liveness probe restarts the pod.

``beat`` may be called from another thread (the stream bridge runs on one): it only stores a float
and sets a Prometheus gauge, both safe across threads.
"""

from __future__ import annotations

import asyncio
import time

from . import metrics

# A beat at least this often while idling: far below any sensible stall bound.
IDLE_BEAT_S = 5.0


class Heartbeat:
    """The last beat of one loop; ``stall_s`` is how long without one counts as stuck."""

    def __init__(self, name: str, stall_s: float):
        self.name = name
        self.stall_s = stall_s
        self.last = time.monotonic()
        self._gauge = metrics.LOOP_LAST_BEAT.labels(name)
        self._gauge.set(time.time())

    def beat(self) -> None:
        self.last = time.monotonic()
        self._gauge.set(time.time())

    def silent_for(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.last

    def stalled(self, now: float | None = None) -> bool:
        return self.silent_for(now) > self.stall_s


class _NoBeat:
    """Stands in when a loop runs outside an app (tests, tools): beats go nowhere."""

    name = "none"

    def beat(self) -> None:
        pass


NO_BEAT = _NoBeat()


async def idle(heartbeat: Heartbeat | _NoBeat, seconds: float, *wake: asyncio.Event) -> bool:
    """Sleep ``seconds`` or until one of ``wake`` is set, beating meanwhile (a loop waiting on
    purpose is not stuck). Returns whether an event woke it."""
    deadline = time.monotonic() + seconds
    # Often enough for any bound (tests use seconds), never busier than every IDLE_BEAT_S.
    step = min(IDLE_BEAT_S, getattr(heartbeat, "stall_s", IDLE_BEAT_S) / 4)
    while True:
        heartbeat.beat()
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if not wake:
            await asyncio.sleep(min(left, step))
            continue
        waiters = [asyncio.ensure_future(e.wait()) for e in wake]
        try:
            done, _ = await asyncio.wait(waiters, timeout=min(left, step),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if done:
            heartbeat.beat()
            return True
