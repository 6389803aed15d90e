-- Ingest: events the bus can never accept (larger than Kafka takes) are moved here by the relay
-- instead of blocking the outbox for every later event. The data they describe is committed; only
-- the event was not delivered. Operators inspect them here (docs/ingest.md).
CREATE TABLE outbox_dead (
    id          bigint      PRIMARY KEY,  -- the outbox id it had
    event_id    uuid        NOT NULL,
    event_key   bytea       NOT NULL,
    payload     bytea       NOT NULL,
    created_at  timestamptz NOT NULL,
    dead_at     timestamptz NOT NULL DEFAULT now(),
    reason      text        NOT NULL
);
