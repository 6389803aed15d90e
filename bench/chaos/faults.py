"""The seeded fault schedule of a chaos run and its execution.

Every kind runs at least once, then more at random; start times are drawn over the middle of the
run so that faults overlap each other and the load, and the last ones end well before the run does
(quiescence is checked afterwards). One target is never hit by two faults at once (a lock each):
a second SIGKILL of a process already dead would prove nothing.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass

from .fleet import Fleet, say
from .monitor import Monitor

KINDS = ("sigkill_ingest", "sigterm_ingest", "sigkill_stream", "sigterm_stream", "sigkill_query",
         "sigterm_query", "kafka_stop_start", "redis_restart", "postgres_restart", "client_stops_reading")


@dataclass(frozen=True, order=True)
class Fault:
    at: float  # seconds after the load started
    kind: str
    target: int  # which instance of the role (ingest-1/2, stream-1/2, monitor index)
    pause: float  # how long the part stays down (or the client stops reading)


def schedule(seed: int, duration: float) -> list[Fault]:
    rng = random.Random(seed)
    lo, hi = 0.1 * duration, 0.7 * duration
    kinds = list(KINDS) + [rng.choice(KINDS) for _ in range(int(duration // 30))]
    return sorted(Fault(round(rng.uniform(lo, hi), 2), k, rng.randrange(2), round(rng.uniform(1.0, 8.0), 2))
                  for k in kinds)


class Injector:
    """Runs a schedule against a fleet; records when each fault was in effect."""

    def __init__(self, fleet: Fleet, monitors: list[Monitor]):
        self.fleet, self.monitors = fleet, monitors
        self.windows: list[tuple[float, float]] = []  # monotonic (start, end) of each fault
        self.done: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def run(self, faults: list[Fault], t0: float) -> None:
        await asyncio.gather(*(self._one(f, t0) for f in faults))

    async def _one(self, fault: Fault, t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + fault.at - time.monotonic()))
        kind = fault.kind
        target = kind.split("_", 1)[1] if kind.startswith("sig") else kind
        if kind.startswith("sig"):
            services = self.fleet.services[target]
            target = services[fault.target % len(services)].name
        elif kind == "client_stops_reading":
            target = self.monitors[fault.target % len(self.monitors)].name
        async with self._lock(target):
            start = time.monotonic()
            say(f"fault {kind} on {target} (for {fault.pause:.1f}s)")
            try:
                await self._apply(fault)
            except Exception as exc:  # noqa: BLE001 - a fault that failed is reported, the run goes on
                say(f"fault {kind} failed: {type(exc).__name__}: {exc}")
                return
            self.windows.append((start, time.monotonic()))
            self.done[kind] = self.done.get(kind, 0) + 1
            say(f"fault {kind} on {target} over after {time.monotonic() - start:.1f}s")

    async def _apply(self, fault: Fault) -> None:
        kind, fleet = fault.kind, self.fleet
        if kind.startswith("sig"):
            sig = signal.SIGKILL if kind.startswith("sigkill") else signal.SIGTERM
            role = kind.split("_", 1)[1]
            svc = fleet.services[role][fault.target % len(fleet.services[role])]
            svc.signal(sig)
            code = await asyncio.to_thread(svc.wait_exit, 60)
            if sig == signal.SIGTERM and code != 0:
                say(f"{svc.name} exited with {code} after SIGTERM (expected 0)")
            await asyncio.sleep(fault.pause)
            svc.start()
            await asyncio.to_thread(svc.wait_healthy, 180)
        elif kind == "kafka_stop_start":
            await asyncio.to_thread(fleet.kafka_stop)
            await asyncio.sleep(fault.pause * 2)
            await asyncio.to_thread(fleet.kafka_start)
        elif kind == "redis_restart":
            await asyncio.to_thread(fleet.redis_restart)
        elif kind == "postgres_restart":
            await asyncio.to_thread(fleet.postgres_restart)
        elif kind == "client_stops_reading":
            monitor = self.monitors[fault.target % len(self.monitors)]
            monitor.stall_s = fault.pause * 3  # up to 24 s: past the server's write timeout
            monitor.stall.set()
            await asyncio.sleep(monitor.stall_s)
        else:
            raise ValueError(kind)
