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
-- They are fed through a queue, so that ingest never waits on a rollup row:
--   * a statement-level AFTER INSERT (and AFTER DELETE) trigger on `results`, with a transition
--     table, aggregates each INSERT/COPY statement of ingest by (day, environment, branch, test)
--     and appends those deltas to `query_rollup_queue` in ingest's own transaction: append-only,
--     so concurrent ingest transactions never lock the same rows, and exact (the deltas commit or
--     roll back with the results);
--   * the query service's rollup worker (atas.query.rollups) claims committed queue rows with
--     DELETE ... FOR UPDATE SKIP LOCKED and adds them to both rollups in the same transaction, so
--     each delta is applied exactly once, whatever the number of pods, with no watermark (a
--     transaction that commits late simply leaves its rows for the next round).
-- Dashboards lag ingest by at most one worker round (QUERY_ROLLUP_INTERVAL_MS).

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

-- No other index on the rollups, on purpose: the worker's upserts only change non-key columns, so
-- with free space left on each page (fillfactor) they are HOT updates that touch no index at all.
-- A range of a rollup is small enough (days x environments x tests) to read whole.

-- One row per statement and (day, environment, branch): the per-test deltas are aligned arrays, so
-- a 100-result batch appends one row, not a hundred.
CREATE TABLE query_rollup_queue (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project        text          NOT NULL,
    day            date          NOT NULL,
    environment    text          NOT NULL,
    branch         text          NOT NULL,
    test_ids       text[]        NOT NULL,
    names          text[]        NOT NULL,
    suites         text[]        NOT NULL,
    runs           integer[]     NOT NULL,  -- negative for deleted results
    passed         integer[]     NOT NULL,
    failed         integer[]     NOT NULL,
    skipped        integer[]     NOT NULL,
    errored        integer[]     NOT NULL,
    retry_passed   integer[]     NOT NULL,
    duration_sum   bigint[]      NOT NULL,
    duration_count bigint[]      NOT NULL,
    duration_max   integer[]     NOT NULL,
    last_failed_at timestamptz[] NOT NULL
);

-- The statement's executions (usually one) are looked up by primary key. OFFSET 0 keeps the lookup
-- a parameterised index scan: transition tables have no statistics, and a plain join may be
-- planned as a hash join over every execution of the table.
CREATE FUNCTION atas_query_rollup_results() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO query_rollup_queue (project, day, environment, branch, test_ids, names, suites, runs, passed, failed, skipped, errored, retry_passed, duration_sum, duration_count, duration_max, last_failed_at)
    WITH ex AS MATERIALIZED (
        SELECT x.execution_id, coalesce(e.environment, '') AS environment, coalesce(e.branch, '') AS branch
        FROM (SELECT DISTINCT execution_id FROM new_results) x
        LEFT JOIN LATERAL (
            SELECT environment, branch FROM executions WHERE id = x.execution_id OFFSET 0
        ) e ON true
    ), per_test AS (
        SELECT n.project, (n.execution_started_at AT TIME ZONE 'UTC')::date AS day, e.environment,
               e.branch, n.test_id,
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
    )
    SELECT project, day, environment, branch, array_agg(test_id), array_agg(name), array_agg(suite),
           array_agg(runs), array_agg(passed), array_agg(failed), array_agg(skipped), array_agg(errored),
           array_agg(retry_passed), array_agg(duration_sum), array_agg(duration_count),
           array_agg(duration_max), array_agg(last_failed_at)
    FROM per_test
    GROUP BY project, day, environment, branch;
    RETURN NULL;
END $$;

CREATE TRIGGER query_rollup_results AFTER INSERT ON results
    REFERENCING NEW TABLE AS new_results
    FOR EACH STATEMENT EXECUTE FUNCTION atas_query_rollup_results();

-- Results deleted by statement (not by dropping a partition) are queued as negative deltas, so the
-- rollups stay equal to a recount (rows left at runs = 0 are ignored by the reads; duration_max and
-- last_failed_at keep the extremes seen). Retention that drops whole partitions should delete the
-- matching days of the rollups in the same transaction.
CREATE FUNCTION atas_query_rollup_results_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO query_rollup_queue (project, day, environment, branch, test_ids, names, suites, runs, passed, failed, skipped, errored, retry_passed, duration_sum, duration_count, duration_max, last_failed_at)
    WITH ex AS MATERIALIZED (
        SELECT x.execution_id, coalesce(e.environment, '') AS environment, coalesce(e.branch, '') AS branch
        FROM (SELECT DISTINCT execution_id FROM old_results) x
        LEFT JOIN LATERAL (
            SELECT environment, branch FROM executions WHERE id = x.execution_id OFFSET 0
        ) e ON true
    ), per_test AS (
        SELECT o.project, (o.execution_started_at AT TIME ZONE 'UTC')::date AS day, e.environment,
               e.branch, o.test_id,
               max(o.name) AS name,
               NULL::text AS suite,
               -count(*) AS runs,
               -count(*) FILTER (WHERE o.status = 'passed') AS passed,
               -count(*) FILTER (WHERE o.status = 'failed') AS failed,
               -count(*) FILTER (WHERE o.status = 'skipped') AS skipped,
               -count(*) FILTER (WHERE o.status = 'error') AS errored,
               -count(*) FILTER (WHERE o.status = 'passed' AND o.attempt > 1) AS retry_passed,
               -coalesce(sum(o.duration_ms), 0) AS duration_sum,
               -count(o.duration_ms) AS duration_count,
               NULL::integer AS duration_max,
               NULL::timestamptz AS last_failed_at
        FROM old_results o
        JOIN ex e ON e.execution_id = o.execution_id
        GROUP BY 1, 2, 3, 4, 5
    )
    SELECT project, day, environment, branch, array_agg(test_id), array_agg(name), array_agg(suite),
           array_agg(runs), array_agg(passed), array_agg(failed), array_agg(skipped), array_agg(errored),
           array_agg(retry_passed), array_agg(duration_sum), array_agg(duration_count),
           array_agg(duration_max), array_agg(last_failed_at)
    FROM per_test
    GROUP BY project, day, environment, branch;
    RETURN NULL;
END $$;

CREATE TRIGGER query_rollup_results_deleted AFTER DELETE ON results
    REFERENCING OLD TABLE AS old_results
    FOR EACH STATEMENT EXECUTE FUNCTION atas_query_rollup_results_deleted();
