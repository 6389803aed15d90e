-- Ingest: the `tests` summary of an execution, beside the attempt counters of V001. One test is
-- one distinct test_id, counted by the status of its final (highest) attempt; a test is flaky when
-- its final attempt passed after an earlier attempt failed or errored. These are the numbers a
-- harness prints (pytest's "7 passed, 3 failed"), where the V001 counters count every attempt.
--
-- Kept exact like the attempt counters: the writer of a batch holds the execution's row lock,
-- reads the earlier attempts of the batch's tests (by primary key) and adds the difference.
-- `max_attempt` (the highest attempt stored) lets it skip that read for a batch of first attempts
-- to an execution that never had a retry: those tests cannot have been stored before.
--
-- Adding NOT NULL columns with a constant default rewrites nothing; the backfill below reads every
-- result once (one pass over `results`, grouped by its primary key prefix) and updates only
-- executions that have results.
ALTER TABLE executions
    ADD COLUMN tests_total   integer NOT NULL DEFAULT 0,
    ADD COLUMN tests_passed  integer NOT NULL DEFAULT 0,
    ADD COLUMN tests_failed  integer NOT NULL DEFAULT 0,
    ADD COLUMN tests_skipped integer NOT NULL DEFAULT 0,
    ADD COLUMN tests_errored integer NOT NULL DEFAULT 0,
    ADD COLUMN tests_flaky   integer NOT NULL DEFAULT 0,
    ADD COLUMN max_attempt   integer NOT NULL DEFAULT 1;

UPDATE executions e
SET tests_total = s.total, tests_passed = s.passed, tests_failed = s.failed,
    tests_skipped = s.skipped, tests_errored = s.errored, tests_flaky = s.flaky,
    max_attempt = s.max_attempt
FROM (
    SELECT execution_id,
           count(*)::int AS total,
           count(*) FILTER (WHERE final = 'passed')::int AS passed,
           count(*) FILTER (WHERE final = 'failed')::int AS failed,
           count(*) FILTER (WHERE final = 'skipped')::int AS skipped,
           count(*) FILTER (WHERE final = 'error')::int AS errored,
           -- The final attempt passed, so any failed/errored attempt of the test came before it.
           count(*) FILTER (WHERE final = 'passed' AND bad)::int AS flaky,
           max(max_attempt)::int AS max_attempt
    FROM (
        SELECT execution_id,
               (array_agg(status ORDER BY attempt DESC))[1] AS final,
               bool_or(status IN ('failed', 'error')) AS bad,
               max(attempt) AS max_attempt
        FROM results
        GROUP BY execution_started_at, execution_id, test_id
    ) per_test
    GROUP BY execution_id
) s
WHERE e.id = s.execution_id;
