-- Attachments (issue #16): metadata of objects in object storage. The bytes never pass through
-- ATAS: a harness uploads to a presigned URL, then completes; only `stored` rows are shown.
CREATE TABLE attachments (
    id              uuid        PRIMARY KEY,
    project         text        NOT NULL,
    execution_id    uuid        NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    test_id         text,                 -- NULL: an attachment of the whole execution
    attempt         integer     CHECK (attempt >= 1),
    name            text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('screenshot', 'video', 'trace', 'log', 'other')),
    content_type    text        NOT NULL,
    size_bytes      bigint      NOT NULL CHECK (size_bytes >= 0),
    sha256          bytea,                -- as the harness declared it
    sha256_verified boolean     NOT NULL DEFAULT false,  -- read back and hashed at completion
    storage_key     text        NOT NULL UNIQUE,  -- generated: project/execution/id, never the client's
    upload_id       text,                 -- multipart uploads: the store's upload id
    parts           integer,              -- multipart uploads: number of parts
    part_bytes      bigint,               -- multipart uploads: size of every part but the last
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'stored')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    stored_at       timestamptz
);

-- Idempotency: the same (execution, test, attempt, name) is the same attachment.
CREATE UNIQUE INDEX attachments_identity
    ON attachments (execution_id, coalesce(test_id, ''), coalesce(attempt, 0), name);
-- Result views list a page's attachments by (execution, test_id, attempt).
CREATE INDEX attachments_execution_test ON attachments (execution_id, test_id, attempt) WHERE state = 'stored';
