-- Ingest: results without a client-supplied id get one from PostgreSQL, so the COPY fast path of
-- the writer can leave the column out instead of generating UUIDs in Python.
ALTER TABLE results ALTER COLUMN id SET DEFAULT gen_random_uuid();
