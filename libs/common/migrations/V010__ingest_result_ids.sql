-- Ingest: a client-supplied result id identifies one result within its execution, so that a
-- retried batch whose results carry ids is recognised even when a harness renumbers attempts.
-- (The primary key already makes (execution, test_id, attempt) unique.) The partition key leads,
-- as PostgreSQL requires for unique indexes on partitioned tables.
CREATE UNIQUE INDEX results_execution_result_id ON results (execution_started_at, execution_id, id);
