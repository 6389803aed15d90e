"""The rollup worker: applies the deltas ingest's trigger queued to the per-test daily rollups.

See ``V020__query_rollups.sql``. Each round claims up to ``batch`` committed queue rows (one per ingest statement and day,
environment and branch, holding per-test deltas as arrays) with
``DELETE … FOR UPDATE SKIP LOCKED``, aggregates them by rollup key and upserts both rollups (keys
in order, so two pods' workers wait for each other rather than deadlock), all in one transaction:
a delta is applied exactly once or, if the round fails, stays queued. Rows of ingest transactions
that commit later are simply claimed by a later round. The worker only writes the query service's
own tables (the rollups and their queue).

After a round commits, the worker tells the response cache which projects it touched
(``on_applied``, :meth:`atas.query.cache.ResponseCache.rollups_applied`): their cached per-test
answers (overview, ``tests/*``) may have been computed before the commit — an overview that already
counts a failed result but does not yet list its test — and must not be served for their TTL.
If that call fails (Redis down), the projects stay pending and are retried every round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

import asyncpg

from atas.common.db import UNAVAILABLE_ERRORS
from atas.common.heartbeat import NO_BEAT, Heartbeat, idle
from atas.common.logging import get_logger

from . import metrics

log = get_logger(__name__)

_SUMS = """sum(runs) AS runs, sum(passed) AS passed, sum(failed) AS failed, sum(skipped) AS skipped,
           sum(errored) AS errored, sum(retry_passed) AS retry_passed, sum(duration_sum) AS duration_sum,
           sum(duration_count) AS duration_count, max(duration_max) AS duration_max,
           max(last_failed_at) AS last_failed_at"""


def _upsert(table: str, key: str) -> str:
    return f"""
        INSERT INTO {table} AS t ({key}, name, suite, runs, passed, failed, skipped, errored, retry_passed,
                                  duration_sum, duration_count, duration_max, last_failed_at)
        SELECT {key}, max(name), max(suite), {_SUMS}
        FROM agg GROUP BY {key} ORDER BY {key}
        ON CONFLICT ({key}) DO UPDATE SET
            name           = excluded.name,
            suite          = coalesce(excluded.suite, t.suite),
            runs           = t.runs + excluded.runs,
            passed         = t.passed + excluded.passed,
            failed         = t.failed + excluded.failed,
            skipped        = t.skipped + excluded.skipped,
            errored        = t.errored + excluded.errored,
            retry_passed   = t.retry_passed + excluded.retry_passed,
            duration_sum   = t.duration_sum + excluded.duration_sum,
            duration_count = t.duration_count + excluded.duration_count,
            duration_max   = greatest(t.duration_max, excluded.duration_max),
            last_failed_at = greatest(t.last_failed_at, excluded.last_failed_at)"""


# Data-modifying CTEs run whether or not the final SELECT reads them; it reports the claimed queue
# rows (one per ingest statement and day/environment/branch), the per-test deltas they held and
# the projects they belong to (whose cached per-test answers the round makes stale).
APPLY_SQL = f"""
    WITH claimed AS (
        DELETE FROM query_rollup_queue
        WHERE id IN (SELECT id FROM query_rollup_queue ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
        RETURNING *
    ), deltas AS (
        SELECT c.project, c.day, c.environment, c.branch, u.*
        FROM claimed c,
             unnest(c.test_ids, c.names, c.suites, c.runs, c.passed, c.failed, c.skipped, c.errored,
                    c.retry_passed, c.duration_sum, c.duration_count, c.duration_max, c.last_failed_at)
             AS u(test_id, name, suite, runs, passed, failed, skipped, errored, retry_passed,
                  duration_sum, duration_count, duration_max, last_failed_at)
    ), agg AS (
        SELECT project, day, environment, branch, test_id, max(name) AS name, max(suite) AS suite, {_SUMS}
        FROM deltas GROUP BY project, day, environment, branch, test_id
    ), by_env AS ({_upsert("query_test_daily", "project, day, environment, test_id")}
    ), by_branch AS ({_upsert("query_test_daily_branch", "project, branch, day, environment, test_id")}
    )
    SELECT (SELECT count(*) FROM claimed) AS claimed, (SELECT count(*) FROM deltas) AS deltas,
           ARRAY(SELECT DISTINCT project FROM claimed) AS projects"""

OnApplied = Callable[[Iterable[str]], Awaitable[None]]


async def apply_once(pool: asyncpg.Pool, batch: int = 1000) -> tuple[int, int, list[str]]:
    """One round: apply up to ``batch`` queue rows; returns (queue rows, per-test deltas, projects)."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(APPLY_SQL, batch)
    return row["claimed"], row["deltas"], row["projects"]


async def drain(pool: asyncpg.Pool, batch: int = 1000, touched: set[str] | None = None,
                after_round: Callable[[], Awaitable[None]] | None = None) -> int:
    """Apply everything committed so far; returns the number of per-test deltas applied.

    The projects of the applied rows are added to ``touched`` as each round commits, so a caller
    learns them even when a later round fails; ``after_round`` runs after each round that applied
    something while more is queued (so a long backlog does not keep caches on answers computed
    before its first rounds).
    """
    total = 0
    while True:
        claimed, deltas, projects = await apply_once(pool, batch)
        total += deltas
        if touched is not None:
            touched.update(projects)
        if claimed < batch:
            return total
        if after_round is not None:
            await after_round()


class RollupWorker:
    """Runs :func:`drain` every ``interval_s`` until stopped, then hands the projects it touched to
    ``on_applied`` (the cache); errors are logged and retried, projects not yet handed over too."""

    def __init__(self, pool: asyncpg.Pool, *, interval_s: float, batch: int, on_applied: OnApplied | None = None,
                 heartbeat: Heartbeat = NO_BEAT):
        self._heartbeat = heartbeat
        self._pool = pool
        self._interval_s = interval_s
        self._batch = batch
        self._on_applied = on_applied
        self._pending: set[str] = set()  # applied, the cache not yet told
        self._cache_failing = False

    async def _publish(self) -> None:
        if not self._pending or self._on_applied is None:
            self._pending.clear()
            return
        projects = frozenset(self._pending)
        try:
            await self._on_applied(projects)
        except Exception as exc:  # noqa: BLE001 - Redis down: keep them pending, retry next round
            if not self._cache_failing:
                log.warning("cannot invalidate per-test cache entries after a rollup round; retrying",
                            error=str(exc), projects=len(projects))
            self._cache_failing = True
            return
        self._pending.difference_update(projects)
        metrics.ROLLUP_INVALIDATIONS.inc(len(projects))
        if self._cache_failing:
            log.info("per-test cache invalidation recovered")
        self._cache_failing = False

    async def run(self, stop: asyncio.Event) -> None:
        failing = False
        while not stop.is_set():
            self._heartbeat.beat()
            started = time.perf_counter()
            try:
                applied = await drain(self._pool, self._batch, self._pending, after_round=self._publish)
            except UNAVAILABLE_ERRORS as exc:
                if not failing:
                    log.warning("rollup worker cannot reach PostgreSQL; retrying", error=str(exc))
                failing = True
            except asyncpg.PostgresError as exc:
                log.error("rollup round failed; its deltas stay queued", error=str(exc))
                failing = True
            else:
                if failing:
                    log.info("rollup worker recovered")
                failing = False
                if applied:
                    metrics.ROLLUP_APPLIED.inc(applied)
                    metrics.ROLLUP_SECONDS.observe(time.perf_counter() - started)
            # Also after a failed round: rounds before it may have committed deltas.
            await self._publish()
            await idle(self._heartbeat, self._interval_s, stop)


async def settle(pool: asyncpg.Pool, batch: int = 1000, timeout_s: float = 60.0,
                 on_applied: OnApplied | None = None) -> None:
    """Drain, then wait until no queued delta is left, including rows another worker is applying:
    after it, the rollups reflect every result committed before the call (tests, benchmark).

    Pass the cache's ``rollups_applied`` as ``on_applied`` when a running query service may already
    have cached per-test answers of the projects drained here (the worker that would otherwise have
    applied those rows, and told the cache, finds nothing to do).
    """
    async with asyncio.timeout(timeout_s):
        while True:
            touched: set[str] = set()
            await drain(pool, batch, touched)
            if touched and on_applied is not None:
                await on_applied(touched)
            async with pool.acquire() as conn:
                if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM query_rollup_queue)"):
                    return
            await asyncio.sleep(0.01)  # another pod's round holds the rest; it commits shortly
