"""Fixtures of the query service tests: an in-process app on real servers, and generated data.

``Dataset`` writes executions and results the way ingest does (results by COPY, execution counters
equal to their results) and keeps the rows in Python, so each test can recount independently.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.engines import install_engines
from atas.query.app import setup
from atas.query.config import QueryConfig
from atas.query.rollups import settle

RESULT_COLUMNS = ["execution_started_at", "execution_id", "project", "test_id", "attempt", "id", "name",
                  "suite", "status", "duration_ms"]


@contextlib.asynccontextmanager
async def query_client(settings, config: QueryConfig | None = None, bus=None) -> AsyncIterator[TestClient]:
    """The query service on a test server, as `atas serve query` would build it."""
    app = create_app(settings, "query")
    install_engines(app, application_name="atas-query-test", bus=bus)
    setup(app, config or QueryConfig())
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@dataclass
class Row:
    execution_started_at: datetime
    execution_id: uuid.UUID
    project: str
    test_id: str
    attempt: int
    status: str
    duration_ms: int
    name: str
    suite: str


@dataclass
class Exec:
    id: uuid.UUID
    project: str
    name: str
    environment: str | None
    branch: str | None
    commit: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    results: list[Row] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def duration_ms(self) -> int:
        return sum(r.duration_ms for r in self.results)

    def tests(self) -> dict[str, int]:
        """The tests summary ingest keeps: distinct tests by their final attempt, plus flaky ones."""
        attempts: dict[str, list[Row]] = {}
        for r in self.results:
            attempts.setdefault(r.test_id, []).append(r)
        out = dict.fromkeys(("total", "passed", "failed", "error", "skipped", "flaky"), 0)
        for rows in attempts.values():
            final = max(rows, key=lambda r: r.attempt)
            out["total"] += 1
            out[final.status] += 1
            out["flaky"] += final.status == "passed" and any(r.status in ("failed", "error") for r in rows)
        return out


class Dataset:
    """Generated executions and results, written to PostgreSQL and kept for recounts."""

    ENVIRONMENTS = ("ci", "staging", None)
    BRANCHES = ("main", "dev")

    def __init__(self, pool: asyncpg.Pool, seed: int = 7):
        self.pool = pool
        self.rng = random.Random(seed)
        self.executions: list[Exec] = []

    async def project(self, key: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("INSERT INTO projects (key) VALUES ($1) ON CONFLICT DO NOTHING", key)

    def make(self, project: str, start: datetime, *, count: int, span: timedelta, tests: int = 12,
             commits: int = 4) -> list[Exec]:
        rng = self.rng
        made = []
        for i in range(count):
            started = start + timedelta(seconds=rng.uniform(0, span.total_seconds()))
            started = started.replace(microsecond=rng.randrange(0, 1_000_000))
            running = rng.random() < 0.1
            e = Exec(id=uuid.uuid4(), project=project, name=f"run {i}", environment=rng.choice(self.ENVIRONMENTS),
                     branch=rng.choice(self.BRANCHES), commit=f"c{rng.randrange(commits)}",
                     status="running" if running else "", started_at=started,
                     finished_at=None if running else started + timedelta(minutes=5))
            for t in rng.sample(range(tests), k=rng.randint(tests // 2, tests)):
                attempt = 1
                while True:
                    status = rng.choices(("passed", "failed", "skipped", "error"), (70, 15, 10, 5))[0]
                    e.results.append(Row(started, e.id, project, f"tests/test_m{t % 3}.py::test_{t}", attempt,
                                         status, rng.randrange(1, 5000), f"test_{t}", f"suite{t % 3}"))
                    if status not in ("failed", "error") or attempt == 3 or rng.random() < 0.5:
                        break
                    attempt += 1
            if not running:
                e.status = "failed" if any(r.status in ("failed", "error") for r in e.results) else "passed"
            made.append(e)
        return made

    async def write(self, executions: list[Exec]) -> None:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.executemany(
                    """INSERT INTO executions (id, project, name, environment, branch, commit_sha, status,
                           started_at, finished_at, total, passed, failed, skipped, errored, duration_ms,
                           tests_total, tests_passed, tests_failed, tests_skipped, tests_errored, tests_flaky,
                           max_attempt)
                       VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22)""",
                    [(e.id, e.project, e.name, e.environment, e.branch, e.commit, e.status, e.started_at,
                      e.finished_at, len(e.results), e.count("passed"), e.count("failed"), e.count("skipped"),
                      e.count("error"), e.duration_ms, *(e.tests()[k] for k in ("total", "passed", "failed",
                                                                               "skipped", "error", "flaky")),
                      max((r.attempt for r in e.results), default=1)) for e in executions])
                await conn.copy_records_to_table(
                    "results", columns=RESULT_COLUMNS,
                    records=[(r.execution_started_at, r.execution_id, r.project, r.test_id, r.attempt, uuid.uuid4(),
                              r.name, r.suite, r.status, r.duration_ms) for e in executions for r in e.results])
        await settle(self.pool)  # the rollups now hold every result written
        self.executions.extend(executions)


@pytest.fixture
async def dataset(pg_pool):
    ds = Dataset(pg_pool)
    await ds.project("demo")
    await ds.project("other")
    return ds


def day_start(d: datetime) -> datetime:
    return d.replace(hour=0, minute=0, second=0, microsecond=0)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)
