"""Read-only SQL of the query service: every aggregation runs in PostgreSQL.

:class:`QueryRepository` only reads (``executions``, ``results`` and the rollup
``query_test_daily`` that a trigger keeps; see ``V020__query_rollups.sql``). Execution-level
aggregates read the executions' exact counters through a covering index, per-test aggregates read
the daily rollup, and lists are keyset pages over indexes, so a page deep in the list costs what
the first one does.

SQL is assembled from fixed fragments with only the filters a request uses, so each variant gets a
plan fit for it (a catch-all ``$n IS NULL OR col = $n`` would share one generic plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class Scope:
    """What every dashboard read filters on."""

    project: str
    start: datetime
    end: datetime  # exclusive
    environment: str | None = None
    branch: str | None = None


class _Where:
    """Collects ``col = $n`` conditions and their arguments."""

    def __init__(self, *args: Any):
        self.args: list[Any] = list(args)
        self.parts: list[str] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, sql: str) -> None:
        self.parts.append(sql)

    def eq(self, column: str, value: Any) -> None:
        if value is not None:
            self.add(f"{column} = {self.arg(value)}")

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts)


_EXEC_STATUS = """
    count(*) FILTER (WHERE status = 'running')   AS ex_running,
    count(*) FILTER (WHERE status = 'passed')    AS ex_passed,
    count(*) FILTER (WHERE status = 'failed')    AS ex_failed,
    count(*) FILTER (WHERE status = 'error')     AS ex_error,
    count(*) FILTER (WHERE status = 'cancelled') AS ex_cancelled,
    coalesce(sum(total), 0)   AS results,
    coalesce(sum(passed), 0)  AS passed,
    coalesce(sum(failed), 0)  AS failed,
    coalesce(sum(skipped), 0) AS skipped,
    coalesce(sum(errored), 0) AS errored,
    coalesce(sum(tests_total), 0)   AS tests_total,
    coalesce(sum(tests_passed), 0)  AS tests_passed,
    coalesce(sum(tests_failed), 0)  AS tests_failed,
    coalesce(sum(tests_skipped), 0) AS tests_skipped,
    coalesce(sum(tests_errored), 0) AS tests_errored,
    coalesce(sum(tests_flaky), 0)   AS tests_flaky"""

_EXECUTION_COLUMNS = """id, project, name, environment, branch, commit_sha, build_url, status, started_at,
    finished_at, updated_at, total, passed, failed, skipped, errored, duration_ms, attributes,
    tests_total, tests_passed, tests_failed, tests_skipped, tests_errored, tests_flaky"""


def _executions_where(scope: Scope) -> _Where:
    w = _Where(scope.project, scope.start, scope.end)
    w.add("project = $1 AND started_at >= $2 AND started_at < $3")
    w.eq("environment", scope.environment)
    w.eq("branch", scope.branch)
    return w


def _daily(scope: Scope, first_day: date, end_day: date) -> tuple[str, _Where]:
    """The rollup to read and its conditions: the per-branch one only when a branch is asked for."""
    table = "query_test_daily_branch" if scope.branch is not None else "query_test_daily"
    w = _Where(scope.project, first_day, end_day)
    w.add("project = $1 AND day >= $2 AND day < $3")
    w.eq("environment", scope.environment)
    w.eq("branch", scope.branch)
    return table, w


_STEPS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


class QueryRepository:
    """Read-only access for the dashboards. Never writes; holds no state but the pool."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    # ------------------------------------------------------------------ execution aggregates
    async def overview(self, scope: Scope) -> asyncpg.Record:
        w = _executions_where(scope)
        sql = f"""
            SELECT count(*) AS executions, {_EXEC_STATUS},
                   avg(duration_ms) FILTER (WHERE status <> 'running') AS duration_mean,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
                       FILTER (WHERE status <> 'running') AS duration_p95
            FROM executions WHERE {w.sql}"""
        async with self._pool.acquire() as conn:
            return await conn.fetchrow(sql, *w.args)

    async def trends(self, scope: Scope, bucket: str) -> list[asyncpg.Record]:
        """One row per bucket of the range, empty buckets included (zeros), oldest first."""
        w = _executions_where(scope)
        unit = w.arg(bucket)
        step = w.arg(_STEPS[bucket])
        sql = f"""
            WITH agg AS (
                SELECT date_trunc({unit}, started_at, 'UTC') AS bucket, count(*) AS executions,
                       {_EXEC_STATUS},
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms)
                           FILTER (WHERE status <> 'running') AS duration_p50,
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
                           FILTER (WHERE status <> 'running') AS duration_p95
                FROM executions WHERE {w.sql}
                GROUP BY 1
            )
            SELECT s.bucket, coalesce(a.executions, 0) AS executions,
                   coalesce(a.ex_running, 0) AS ex_running, coalesce(a.ex_passed, 0) AS ex_passed,
                   coalesce(a.ex_failed, 0) AS ex_failed, coalesce(a.ex_error, 0) AS ex_error,
                   coalesce(a.ex_cancelled, 0) AS ex_cancelled, coalesce(a.results, 0) AS results,
                   coalesce(a.passed, 0) AS passed, coalesce(a.failed, 0) AS failed,
                   coalesce(a.skipped, 0) AS skipped, coalesce(a.errored, 0) AS errored,
                   coalesce(a.tests_total, 0) AS tests_total, coalesce(a.tests_passed, 0) AS tests_passed,
                   coalesce(a.tests_failed, 0) AS tests_failed, coalesce(a.tests_skipped, 0) AS tests_skipped,
                   coalesce(a.tests_errored, 0) AS tests_errored, coalesce(a.tests_flaky, 0) AS tests_flaky,
                   a.duration_p50, a.duration_p95
            FROM generate_series(date_trunc({unit}, $2::timestamptz, 'UTC'),
                                 $3::timestamptz - interval '1 microsecond',
                                 {step}::interval, 'UTC') AS s(bucket)
            LEFT JOIN agg a ON a.bucket = s.bucket
            ORDER BY s.bucket"""
        async with self._pool.acquire() as conn:
            return await conn.fetch(sql, *w.args)

    # ------------------------------------------------------------------ executions
    async def execution(self, execution_id: str) -> asyncpg.Record | None:
        async with self._pool.acquire() as conn:
            return await conn.fetchrow(f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = $1",
                                       execution_id)

    async def executions_page(self, project: str, *, limit: int, after: tuple[datetime, str] | None,
                              environment: str | None, branch: str | None, status: str | None,
                              start: datetime | None, end: datetime | None) -> list[asyncpg.Record]:
        """Newest first by (started_at, id); ``after`` is the last row of the previous page."""
        w = _Where(project)
        w.add("project = $1")
        w.eq("environment", environment)
        w.eq("branch", branch)
        w.eq("status", status)
        if start is not None:
            w.add(f"started_at >= {w.arg(start)}")
        if end is not None:
            w.add(f"started_at < {w.arg(end)}")
        if after is not None:
            w.add(f"(started_at, id) < ({w.arg(after[0])}, {w.arg(after[1])}::uuid)")
        sql = (f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE {w.sql} "
               f"ORDER BY started_at DESC, id DESC LIMIT {w.arg(limit)}")
        async with self._pool.acquire() as conn:
            return await conn.fetch(sql, *w.args)

    async def results_page(self, started_at: datetime, execution_id: str, *, limit: int,
                           after: tuple[str, int] | None, statuses: list[str] | None) -> list[asyncpg.Record]:
        """Results of one execution by (test_id, attempt): a range scan of the primary key."""
        w = _Where(started_at, execution_id)
        w.add("execution_started_at = $1 AND execution_id = $2::uuid")
        if statuses:
            w.add(f"status = ANY({w.arg(statuses)}::text[])")
        if after is not None:
            w.add(f"(test_id, attempt) > ({w.arg(after[0])}, {w.arg(after[1])})")
        sql = f"""SELECT test_id, attempt, id, name, suite, file, status, started_at, duration_ms,
                         error_type, error_message, error_trace, attachments, attributes
                  FROM results WHERE {w.sql} ORDER BY test_id, attempt LIMIT {w.arg(limit)}"""
        async with self._pool.acquire() as conn:
            return await conn.fetch(sql, *w.args)

    # ------------------------------------------------------------------ per-test aggregates
    async def top_failing(self, scope: Scope, first_day: date, end_day: date, limit: int) -> list[asyncpg.Record]:
        """Tests by failures (failed + error attempts) over whole UTC days, from the rollup, with
        their runs over the whole range (days without failures included) for a failure rate.

        The overview and ``tests/failing`` both read it this way, so their numbers agree: reading
        only the days with failures would save little (the rollup has no index on failures, the
        range is read either way) and would undercount ``runs``.
        """
        table, w = _daily(scope, first_day, end_day)
        sql = f"""
            SELECT test_id, max(name) AS name, max(suite) AS suite,
                   sum(failed + errored)::bigint AS failures, sum(runs)::bigint AS runs,
                   max(last_failed_at) AS last_failed_at
            FROM {table} WHERE {w.sql}
            GROUP BY test_id HAVING sum(failed + errored) > 0
            ORDER BY failures DESC, test_id LIMIT {w.arg(limit)}"""
        async with self._pool.acquire() as conn:
            return await conn.fetch(sql, *w.args)

    async def slowest(self, scope: Scope, first_day: date, end_day: date, limit: int) -> list[asyncpg.Record]:
        table, w = _daily(scope, first_day, end_day)
        sql = f"""
            SELECT test_id, max(name) AS name, max(suite) AS suite, sum(runs)::bigint AS runs,
                   sum(duration_sum)::float8 / sum(duration_count) AS mean_ms,
                   max(duration_max) AS max_ms
            FROM {table} WHERE {w.sql}
            GROUP BY test_id HAVING sum(duration_count) > 0
            ORDER BY mean_ms DESC, test_id LIMIT {w.arg(limit)}"""
        async with self._pool.acquire() as conn:
            return await conn.fetch(sql, *w.args)

    async def flaky(self, scope: Scope, first_day: date, end_day: date, limit: int) -> list[asyncpg.Record]:
        """Tests that passed on a retry, or whose re-runs of one commit disagreed.

        ``retry_passes`` (attempts > 1 that passed) come from the rollup. ``flaky_commits`` counts
        the (commit, environment) pairs run by more than one execution in the range on which the
        test's *final* attempt passed in one execution and failed in another (a fail-then-pass
        within one execution is a retry pass, not counted twice): only the results of those re-run
        executions are read (by primary key), so the cost follows re-runs, not all results of the
        range.
        """
        table = "query_test_daily_branch" if scope.branch is not None else "query_test_daily"
        w = _Where(scope.project, first_day, end_day)
        # The same optional filters on the executions (alias e) and on the rollup (alias d).
        filters = [(col, w.arg(val)) for col, val in (("environment", scope.environment),
                                                      ("branch", scope.branch)) if val is not None]
        e_filter = "".join(f" AND e.{col} = {ref}" for col, ref in filters)
        d_filter = "".join(f" AND d.{col} = {ref}" for col, ref in filters)
        lim = w.arg(limit)
        sql = f"""
            WITH ex AS (
                SELECT e.id, e.started_at, e.commit_sha, e.environment,
                       count(*) OVER (PARTITION BY e.commit_sha, e.environment) AS runs
                FROM executions e
                WHERE e.project = $1 AND e.commit_sha IS NOT NULL
                  AND e.started_at >= ($2::date)::timestamp AT TIME ZONE 'UTC'
                  AND e.started_at < ($3::date)::timestamp AT TIME ZONE 'UTC'{e_filter}
            ), flips AS (
                SELECT g.test_id, count(*) AS flaky_commits
                FROM (
                    SELECT x.commit_sha, x.environment, r.test_id
                    FROM ex x
                    -- One primary-key range per re-run execution. OFFSET 0 keeps the subquery a
                    -- parameterised scan: the planner cannot estimate how few executions are
                    -- re-runs and would otherwise hash-join every result of the table.
                    CROSS JOIN LATERAL (
                        SELECT DISTINCT ON (r.test_id) r.test_id, r.status FROM results r
                        WHERE r.execution_started_at = x.started_at AND r.execution_id = x.id
                        ORDER BY r.test_id, r.attempt DESC  -- each test's final attempt
                        OFFSET 0
                    ) r
                    WHERE x.runs > 1
                    GROUP BY 1, 2, 3
                    HAVING bool_or(r.status = 'passed') AND bool_or(r.status IN ('failed', 'error'))
                ) g
                GROUP BY g.test_id
            ), retries AS (
                SELECT d.test_id, sum(d.retry_passed)::bigint AS retry_passes
                FROM {table} d
                WHERE d.project = $1 AND d.day >= $2 AND d.day < $3 AND d.retry_passed > 0{d_filter}
                GROUP BY d.test_id
            ), flaky AS (
                SELECT coalesce(f.test_id, r.test_id) AS test_id,
                       coalesce(f.flaky_commits, 0) AS flaky_commits,
                       coalesce(r.retry_passes, 0) AS retry_passes
                FROM flips f FULL JOIN retries r ON r.test_id = f.test_id
                ORDER BY flaky_commits + retry_passes DESC, test_id
                LIMIT {lim}
            )
            SELECT k.test_id, k.flaky_commits, k.retry_passes,
                   max(d.name) AS name, max(d.suite) AS suite, coalesce(sum(d.runs), 0)::bigint AS runs
            FROM flaky k LEFT JOIN {table} d
              ON d.project = $1 AND d.day >= $2 AND d.day < $3 AND d.test_id = k.test_id{d_filter}
            GROUP BY k.test_id, k.flaky_commits, k.retry_passes
            ORDER BY k.flaky_commits + k.retry_passes DESC, k.test_id"""
        async with self._pool.acquire() as conn:
            return await conn.fetch(sql, *w.args)

    async def history(self, project: str, test_id: str, *, start: datetime, end: datetime, limit: int,
                      after: tuple[datetime, str, int] | None, environment: str | None,
                      branch: str | None) -> list[asyncpg.Record]:
        """Attempts of one test, newest first, keyset by (execution start, execution id, attempt)."""
        w = _Where(project, test_id, start, end)
        w.add("r.project = $1 AND r.test_id = $2 AND r.execution_started_at >= $3 "
              "AND r.execution_started_at < $4")
        w.eq("e.environment", environment)
        w.eq("e.branch", branch)
        if after is not None:
            w.add(f"(r.execution_started_at, r.execution_id, r.attempt) < "
                  f"({w.arg(after[0])}, {w.arg(after[1])}::uuid, {w.arg(after[2])})")
        sql = f"""
            SELECT r.execution_id, e.name AS execution_name, r.execution_started_at, e.environment,
                   e.branch, e.commit_sha, r.test_id, r.attempt, r.status, r.duration_ms, r.error_type,
                   r.error_message, r.attachments
            FROM results r JOIN executions e ON e.id = r.execution_id
            WHERE {w.sql}
            ORDER BY r.execution_started_at DESC, r.execution_id DESC, r.attempt DESC
            LIMIT {w.arg(limit)}"""
        async with self._pool.acquire() as conn:
            return await conn.fetch(sql, *w.args)
