-- ATAS core schema: projects, executions, results (every attempt, partitioned by time), outbox.
--
-- Version ranges, so that parts of the team can add migrations without colliding:
--   V001-V009 common, V010-V019 ingest, V020-V029 query, V030-V039 stream.

CREATE TABLE projects (
    key        text PRIMARY KEY CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One run of a test harness. The id is a UUID the client may choose (idempotent create).
CREATE TABLE executions (
    id            uuid PRIMARY KEY,
    project       text        NOT NULL REFERENCES projects (key),
    name          text        NOT NULL,
    environment   text,
    branch        text,
    commit_sha    text,
    build_url     text,
    attributes    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status        text        NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'passed', 'failed', 'error', 'cancelled')),
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    -- Counters over every stored attempt, kept exact by `UPDATE ... SET passed = passed + $n`
    -- under the row lock of the writing transaction.
    total         integer     NOT NULL DEFAULT 0,
    passed        integer     NOT NULL DEFAULT 0,
    failed        integer     NOT NULL DEFAULT 0,
    skipped       integer     NOT NULL DEFAULT 0,
    errored       integer     NOT NULL DEFAULT 0,
    duration_ms   bigint      NOT NULL DEFAULT 0,  -- sum of result durations
    -- Per-execution event sequence: the last `seq` handed to an event of this execution.
    last_seq      integer     NOT NULL DEFAULT 0,
    -- Digest of the create request, to tell a harmless retry (same body) from a conflict (409).
    request_hash  bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Recent executions, newest first, keyset-paginated: (started_at, id) is the cursor.
CREATE INDEX executions_project_started ON executions (project, started_at DESC, id DESC);
CREATE INDEX executions_project_env_started ON executions (project, environment, started_at DESC, id DESC);
CREATE INDEX executions_project_branch_started ON executions (project, branch, started_at DESC, id DESC);

-- One attempt of one test. Partitioned by the execution's start time, so that every result of an
-- execution lands in one partition, the idempotency key can include the partition key, and
-- retention drops whole months.
CREATE TABLE results (
    execution_started_at timestamptz NOT NULL,
    execution_id  uuid        NOT NULL,
    project       text        NOT NULL,
    test_id       text        NOT NULL,
    attempt       integer     NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    id            uuid        NOT NULL,  -- client-supplied result id, or generated
    name          text        NOT NULL,
    suite         text,
    file          text,
    status        text        NOT NULL CHECK (status IN ('passed', 'failed', 'skipped', 'error')),
    started_at    timestamptz,
    duration_ms   integer     CHECK (duration_ms >= 0),
    error_type    text,
    error_message text,
    error_trace   text,
    attachments   jsonb,
    attributes    jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_started_at, execution_id, test_id, attempt)
) PARTITION BY RANGE (execution_started_at);

-- Dashboard ranges over a project (overview, trends, slowest).
CREATE INDEX results_project_time ON results (project, execution_started_at);
-- Failing tests: only failures are indexed, a small fraction of all rows.
CREATE INDEX results_project_failures ON results (project, execution_started_at)
    WHERE status IN ('failed', 'error');
-- History of one test.
CREATE INDEX results_project_test_time ON results (project, test_id, execution_started_at DESC);

-- Old reports (imported JUnit files) and anything outside the prepared months land here.
CREATE TABLE results_default PARTITION OF results DEFAULT;

-- Creates monthly partitions from `months_back` months ago to `months_ahead` months ahead.
-- Safe to call repeatedly (ingest calls it at start and daily). A month whose rows already sit in
-- the default partition is skipped with a NOTICE instead of failing.
CREATE FUNCTION atas_ensure_result_partitions(months_back integer, months_ahead integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    created integer := 0;
    m integer;
    lo timestamptz;
    hi timestamptz;
    part text;
BEGIN
    FOR m IN -months_back .. months_ahead LOOP
        lo := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + make_interval(months => m);
        hi := lo + interval '1 month';
        part := 'results_' || to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF results FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
                created := created + 1;
            EXCEPTION WHEN check_violation OR invalid_object_definition THEN
                RAISE NOTICE 'partition % skipped: the default partition holds rows for it', part;
            END;
        END IF;
    END LOOP;
    RETURN created;
END $$;

SELECT atas_ensure_result_partitions(1, 3);

-- Transactional outbox: events are written here in the same transaction as the data, and relayed
-- to Kafka at least once. Rows are deleted once Kafka acknowledged them.
CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid        NOT NULL,
    event_key    bytea       NOT NULL,  -- Kafka key: the execution id
    payload      bytea       NOT NULL,  -- msgspec-encoded event envelope
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);

-- Wake relays as soon as something is committed (polling is only the fallback).
CREATE FUNCTION atas_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('atas_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION atas_outbox_notify();
