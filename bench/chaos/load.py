"""The load of a chaos run: harnesses that report through :class:`atas.client.AsyncClient` (its
retries on 429/502/503/504 and connection errors, its back-off), SSE monitors that resume with
``Last-Event-ID``, and dashboard readers on query. Each records what it saw for the checks.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field

import aiohttp

from atas.client import AsyncClient, AtasError

STATUSES = ("passed", "passed", "passed", "failed", "skipped", "error")


@dataclass
class History:
    """Everything the clients saw, kept for the checks after quiescence."""

    sent: set[str] = field(default_factory=set)  # result ids ever put on the wire
    acked: set[str] = field(default_factory=set)  # result ids of batches the server acknowledged
    executions: set[str] = field(default_factory=set)
    batch_calls: list[tuple[float, float, bool]] = field(default_factory=list)  # (start, end, ok)
    harness_errors: int = 0
    reads_ok: int = 0
    reads_failed: int = 0


class Harness:
    """One test harness: start an execution (client-chosen id), send batches (client-chosen result
    ids), finish it; again until stopped. A batch that fails after the client's retries is sent
    again unchanged (a harness that keeps its spool), to the other ingest process."""

    def __init__(self, n: int, urls: list[str], token: str, project: str, history: History, rng: random.Random):
        self.n, self.urls, self.token, self.project, self.h, self.rng = n, urls, token, project, history, rng

    async def run(self, stop: asyncio.Event, session: aiohttp.ClientSession) -> None:
        clients = [AsyncClient(u, self.token, retries=5, backoff_s=0.2, backoff_max_s=5.0, timeout_s=20,
                               session=session) for u in self.urls]
        turn = self.n
        while not stop.is_set():
            exe = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            batches = [[{"id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                         "test_id": f"tests/test_{self.n}.py::t{b}_{i}", "name": f"t{b}_{i}",
                         "status": self.rng.choice(STATUSES), "duration_ms": self.rng.randint(1, 500)}
                        for i in range(self.rng.randint(5, 40))] for b in range(self.rng.randint(2, 6))]
            steps = [("start", None)] + [("batch", b) for b in batches] + [("finish", None)]
            for kind, batch in steps:
                while True:  # a step is repeated until the server takes it (or the run ends)
                    if stop.is_set() and kind != "batch":
                        return
                    client = clients[turn % len(clients)]
                    turn += 1
                    t0 = time.monotonic()
                    try:
                        if kind == "start":
                            await client.start_execution(self.project, f"run-{self.n}", id=exe, branch="main")
                            self.h.executions.add(exe)
                        elif kind == "batch":
                            self.h.sent.update(r["id"] for r in batch)
                            await client.add_results(exe, batch)
                            self.h.acked.update(r["id"] for r in batch)
                        else:
                            await client.finish_execution(exe)
                        self.h.batch_calls.append((t0, time.monotonic(), True))
                        break
                    except (AtasError, aiohttp.ClientError, asyncio.TimeoutError):
                        self.h.batch_calls.append((t0, time.monotonic(), False))
                        self.h.harness_errors += 1
                        if stop.is_set():
                            return
                        await asyncio.sleep(0.5)
            await asyncio.sleep(self.rng.random() * 0.2)


async def dashboard_reader(urls: list[str], token: str, project: str, history: History, stop: asyncio.Event,
                           session: aiohttp.ClientSession) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    paths = ["/v1/dashboard/overview", "/v1/executions", "/v1/trends", "/v1/tests/failing"]
    i = 0
    while not stop.is_set():
        url = urls[i % len(urls)] + paths[i % len(paths)]
        i += 1
        try:
            async with session.get(url, params={"project": project}, headers=auth,
                                   timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()
                if r.status == 200:
                    history.reads_ok += 1
                else:
                    history.reads_failed += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            history.reads_failed += 1
        try:
            await asyncio.wait_for(stop.wait(), 0.3)
        except TimeoutError:
            pass


class Availability:
    """Per service, the longest stretch in which no instance answered ``/readyz`` with 200."""

    def __init__(self, services: dict[str, list[str]]):
        self.services = services
        self.down_since: dict[str, float | None] = {k: None for k in services}
        self.max_down: dict[str, float] = {k: 0.0 for k in services}

    async def run(self, stop: asyncio.Event, session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            now = time.monotonic()
            for role, urls in self.services.items():
                ok = any(await asyncio.gather(*(self._ready(session, u) for u in urls)))
                since = self.down_since[role]
                if ok:
                    self.down_since[role] = None
                elif since is None:
                    self.down_since[role] = now
                else:
                    self.max_down[role] = max(self.max_down[role], now - since)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass

    @staticmethod
    async def _ready(session: aiohttp.ClientSession, url: str) -> bool:
        try:
            async with session.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False
