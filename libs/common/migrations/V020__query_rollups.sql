-- Query service: exact per-test daily rollups.
--
-- Execution-level aggregates (overview, trends) read only `executions`, whose counters ingest keeps
-- exact, through V001's (project, started_at) indexes. No covering index is added there on purpose:
-- ingest updates the counters on every batch, and indexing them would turn those HOT updates into
-- index writes; the heap fetches of a range of executions are cheaper than that.
--
-- Per-test aggregates (failing, slowest, flaky, top failing tests) would otherwise scan every
-- result of the range. Two rollups hold one row per UTC day (of the execution start) and test, so
-- their cost grows with days x tests, not with results:
--   query_test_daily         (project, day, environment, test)          dashboards without a branch
--   query_test_daily_branch  (project, branch, day, environment, test)  dashboards of one branch
-- Branches are kept out of the first: a project with hundreds of short-lived feature branches
-- would otherwise split every (day, test) into as many rows and the rollup would approach the size
-- of `results`. With a branch filter, the second is read by its primary key (branch leads).
--
-- Both are maintained by a statement-level AFTER INSERT trigger with a transition table: one
-- aggregation and two key-ordered upserts per INSERT/COPY statement of ingest, in ingest's own
-- transaction, so they are exact (they commit or roll back with the results) without a watermark
-- or a worker. Key order makes two concurrent ingest transactions touching the same tests wait for
-- each other instead of deadlocking. Its cost on ingest is measured by `scripts/bench query`.
CREATE TABLE query_test_daily (
    project        text    NOT NULL,
    day            date    NOT NULL,
    environment    text    NOT NULL,  -- '' when the execution has none
    test_id        text    NOT NULL,
    name           text    NOT NULL,  -- latest seen
    suite          text,
    runs           integer NOT NULL,  -- attempts
    passed         integer NOT NULL,
    failed         integer NOT NULL,
    skipped        integer NOT NULL,
    errored        integer NOT NULL,
    retry_passed   integer NOT NULL,  -- passed on an attempt > 1 (flaky)
    duration_sum   bigint  NOT NULL,
    duration_count integer NOT NULL,  -- attempts with a duration
    duration_max   integer,
    last_failed_at timestamptz,       -- start of the latest execution with a failure/error
    PRIMARY KEY (project, day, environment, test_id)
) WITH (fillfactor = 80);

CREATE TABLE query_test_daily_branch (
    branch         text    NOT NULL,  -- '' when the execution has none
    LIKE query_test_daily,
    PRIMARY KEY (project, branch, day, environment, test_id)
) WITH (fillfactor = 80);

-- No other index on the rollups, on purpose: ingest's upserts only change non-key columns, so with
-- free space left on each page (fillfactor) they are HOT updates that touch no index at all. A
-- range of a rollup is small enough (days x environments x tests) to read whole.

CREATE FUNCTION atas_query_rollup_results() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The statement's executions (usually one), each looked up by primary key. OFFSET 0 keeps the
    -- lookup a parameterised index scan: transition tables have no statistics, and a plain join
    -- may be planned as a hash join over every execution of the table.
    WITH ex AS MATERIALIZED (
        SELECT x.execution_id, coalesce(e.environment, '') AS environment, coalesce(e.branch, '') AS branch
        FROM (SELECT DISTINCT execution_id FROM new_results) x
        LEFT JOIN LATERAL (
            SELECT environment, branch FROM executions WHERE id = x.execution_id OFFSET 0
        ) e ON true
    ), agg AS (
        SELECT n.project,
               (n.execution_started_at AT TIME ZONE 'UTC')::date AS day,
               e.environment,
               e.branch,
               n.test_id,
               max(n.name) AS name,
               max(n.suite) AS suite,
               count(*) AS runs,
               count(*) FILTER (WHERE n.status = 'passed') AS passed,
               count(*) FILTER (WHERE n.status = 'failed') AS failed,
               count(*) FILTER (WHERE n.status = 'skipped') AS skipped,
               count(*) FILTER (WHERE n.status = 'error') AS errored,
               count(*) FILTER (WHERE n.status = 'passed' AND n.attempt > 1) AS retry_passed,
               coalesce(sum(n.duration_ms), 0) AS duration_sum,
               count(n.duration_ms) AS duration_count,
               max(n.duration_ms) AS duration_max,
               max(n.execution_started_at) FILTER (WHERE n.status IN ('failed', 'error')) AS last_failed_at
        FROM new_results n
        JOIN ex e ON e.execution_id = n.execution_id
        GROUP BY 1, 2, 3, 4, 5
    ), by_env AS (
        INSERT INTO query_test_daily AS t (
            project, day, environment, test_id, name, suite, runs, passed, failed, skipped, errored,
            retry_passed, duration_sum, duration_count, duration_max, last_failed_at)
        SELECT project, day, environment, test_id, max(name), max(suite),
               sum(runs),
               sum(passed),
               sum(failed),
               sum(skipped),
               sum(errored),
               sum(retry_passed),
               sum(duration_sum),
               sum(duration_count),
               max(duration_max), max(last_failed_at)
        FROM agg
        GROUP BY project, day, environment, test_id
        ORDER BY project, day, environment, test_id
        ON CONFLICT (project, day, environment, test_id) DO UPDATE SET
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
        last_failed_at = greatest(t.last_failed_at, excluded.last_failed_at)
    )
    INSERT INTO query_test_daily_branch AS b (
        branch, project, day, environment, test_id, name, suite, runs, passed, failed, skipped, errored,
        retry_passed, duration_sum, duration_count, duration_max, last_failed_at)
    SELECT branch, project, day, environment, test_id, name, suite, runs, passed, failed, skipped, errored,
           retry_passed, duration_sum, duration_count, duration_max, last_failed_at
    FROM agg
    ORDER BY project, branch, day, environment, test_id
    ON CONFLICT (project, branch, day, environment, test_id) DO UPDATE SET
        name           = excluded.name,
        suite          = coalesce(excluded.suite, b.suite),
        runs           = b.runs + excluded.runs,
        passed         = b.passed + excluded.passed,
        failed         = b.failed + excluded.failed,
        skipped        = b.skipped + excluded.skipped,
        errored        = b.errored + excluded.errored,
        retry_passed   = b.retry_passed + excluded.retry_passed,
        duration_sum   = b.duration_sum + excluded.duration_sum,
        duration_count = b.duration_count + excluded.duration_count,
        duration_max   = greatest(b.duration_max, excluded.duration_max),
        last_failed_at = greatest(b.last_failed_at, excluded.last_failed_at);
    RETURN NULL;
END $$;

CREATE TRIGGER query_rollup_results AFTER INSERT ON results
    REFERENCING NEW TABLE AS new_results
    FOR EACH STATEMENT EXECUTE FUNCTION atas_query_rollup_results();

-- Results deleted by statement (not by dropping a partition) are subtracted again, so the rollups
-- stay equal to a recount (rows left at runs = 0 are ignored by the reads; duration_max and
-- last_failed_at keep the extremes seen). Retention that drops whole partitions should delete the
-- matching days of the rollups in the same transaction.
CREATE FUNCTION atas_query_rollup_results_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE query_test_daily t SET
        runs = t.runs - d.runs, passed = t.passed - d.passed, failed = t.failed - d.failed,
        skipped = t.skipped - d.skipped, errored = t.errored - d.errored,
        retry_passed = t.retry_passed - d.retry_passed, duration_sum = t.duration_sum - d.duration_sum,
        duration_count = t.duration_count - d.duration_count
    FROM (
        SELECT o.project AS project, (o.execution_started_at AT TIME ZONE 'UTC')::date AS day, coalesce(e.environment, '') AS environment, o.test_id AS test_id,
               count(*) AS runs,
               count(*) FILTER (WHERE o.status = 'passed') AS passed,
               count(*) FILTER (WHERE o.status = 'failed') AS failed,
               count(*) FILTER (WHERE o.status = 'skipped') AS skipped,
               count(*) FILTER (WHERE o.status = 'error') AS errored,
               count(*) FILTER (WHERE o.status = 'passed' AND o.attempt > 1) AS retry_passed,
               coalesce(sum(o.duration_ms), 0) AS duration_sum,
               count(o.duration_ms) AS duration_count
        FROM old_results o LEFT JOIN executions e ON e.id = o.execution_id
        GROUP BY 1, 2, 3, 4
    ) d
    WHERE (t.project, t.day, t.environment, t.test_id) = (d.project, d.day, d.environment, d.test_id);
    UPDATE query_test_daily_branch t SET
        runs = t.runs - d.runs, passed = t.passed - d.passed, failed = t.failed - d.failed,
        skipped = t.skipped - d.skipped, errored = t.errored - d.errored,
        retry_passed = t.retry_passed - d.retry_passed, duration_sum = t.duration_sum - d.duration_sum,
        duration_count = t.duration_count - d.duration_count
    FROM (
        SELECT o.project AS project, coalesce(e.branch, '') AS branch, (o.execution_started_at AT TIME ZONE 'UTC')::date AS day, coalesce(e.environment, '') AS environment, o.test_id AS test_id,
               count(*) AS runs,
               count(*) FILTER (WHERE o.status = 'passed') AS passed,
               count(*) FILTER (WHERE o.status = 'failed') AS failed,
               count(*) FILTER (WHERE o.status = 'skipped') AS skipped,
               count(*) FILTER (WHERE o.status = 'error') AS errored,
               count(*) FILTER (WHERE o.status = 'passed' AND o.attempt > 1) AS retry_passed,
               coalesce(sum(o.duration_ms), 0) AS duration_sum,
               count(o.duration_ms) AS duration_count
        FROM old_results o LEFT JOIN executions e ON e.id = o.execution_id
        GROUP BY 1, 2, 3, 4, 5
    ) d
    WHERE (t.project, t.branch, t.day, t.environment, t.test_id) = (d.project, d.branch, d.day, d.environment, d.test_id);
    RETURN NULL;
END $$;

CREATE TRIGGER query_rollup_results_deleted AFTER DELETE ON results
    REFERENCING OLD TABLE AS old_results
    FOR EACH STATEMENT EXECUTE FUNCTION atas_query_rollup_results_deleted();
