-- Ingest: whether an execution's final status was sent by the client ('explicit') or derived from
-- the final attempt of each test at finish ('derived'). A derived status follows results that
-- arrive after finish (the writer derives it again in their transaction); an explicit one never
-- changes. NULL while running, and for executions finished before this migration (nobody knows
-- how their status came about, so it is left alone). Nullable without a default: adding the
-- column rewrites nothing.
ALTER TABLE executions ADD COLUMN status_source text CHECK (status_source IN ('derived', 'explicit'));
