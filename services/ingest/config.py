"""Ingest configuration: one frozen struct, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from atas.common.config import ConfigError, EnvReader


class IngestConfig(msgspec.Struct, frozen=True):
    """Knobs of the write path and the outbox relay. Tests construct it directly."""

    # Results per batch request. Bigger batches amortise the per-request transaction; the limit
    # keeps one request's transaction (and the row lock it holds on its execution) short.
    max_batch: int = 1000
    # Request body limit in bytes (413 above it); also bounds a JUnit upload.
    max_body_bytes: int = 10 * 1024 * 1024
    # Execution start times further in the future than this are refused (422): they would land in
    # the default partition and point at a clock that is wrong.
    max_clock_skew_s: int = 86_400
    # Failed tests listed in one results.recorded event; the rest is flagged `failed_truncated`.
    event_max_failed: int = 100
    # Relay: rows claimed per transaction (and published in one producer batch).
    relay_batch: int = 500
    # Relay: polling fallback when no NOTIFY arrives (lost LISTEN connection, missed wake-up).
    relay_poll_s: float = 1.0
    # Relay: after a NOTIFY, wait this long for more commits before claiming, so that under load
    # one round carries the events of many requests instead of one round per request. It adds at
    # most this much to event latency (live monitors do not notice 20 ms).
    relay_linger_s: float = 0.02
    # Relay: exponential back-off with jitter while Kafka or PostgreSQL fails, capped here.
    relay_backoff_max_s: float = 30.0
    # Relay: how long a round waits for the bus to acknowledge a batch. Kafka's idempotent producer
    # never gives up on a batch, so while Kafka is down the round ends here, the rows are released
    # (and marked with the error), and the relay waits for that same in-flight batch before it
    # claims more: an outage costs one batch in flight, not one copy per retry.
    relay_publish_timeout_s: float = 15.0
    # Run the relay in this process (1) or not (0, e.g. a dedicated relay deployment elsewhere).
    relay_enabled: bool = True
    # How often to create the next months' result partitions (the call is idempotent).
    partition_interval_s: float = 86_400.0


def load_config(env: Mapping[str, str] | None = None) -> IngestConfig:
    """Read ``INGEST_*`` variables (defaults are the struct's); raise :class:`ConfigError` naming
    each bad one. Called once, by the entry point (``atas serve``, ``atas dev``)."""
    e = EnvReader(os.environ if env is None else env)
    d = IngestConfig()
    config = IngestConfig(
        max_batch=e.int("INGEST_MAX_BATCH", d.max_batch, lo=1, hi=100_000),
        max_body_bytes=e.int("INGEST_MAX_BODY_BYTES", d.max_body_bytes, lo=1024),
        max_clock_skew_s=e.int("INGEST_MAX_CLOCK_SKEW_SECONDS", d.max_clock_skew_s, lo=0),
        event_max_failed=e.int("INGEST_EVENT_MAX_FAILED", d.event_max_failed, lo=0, hi=10_000),
        relay_batch=e.int("INGEST_RELAY_BATCH", d.relay_batch, lo=1, hi=10_000),
        relay_poll_s=e.float("INGEST_RELAY_POLL_SECONDS", d.relay_poll_s, lo=0.01),
        relay_linger_s=e.float("INGEST_RELAY_LINGER_SECONDS", d.relay_linger_s, lo=0.0),
        relay_backoff_max_s=e.float("INGEST_RELAY_BACKOFF_MAX_SECONDS", d.relay_backoff_max_s, lo=0.1),
        relay_publish_timeout_s=e.float("INGEST_RELAY_PUBLISH_TIMEOUT_SECONDS", d.relay_publish_timeout_s,
                                        lo=0.1),
        relay_enabled=e.bool("INGEST_RELAY_ENABLED", d.relay_enabled),
        partition_interval_s=e.float("INGEST_PARTITION_INTERVAL_SECONDS", d.partition_interval_s, lo=1.0),
    )
    if e.problems:
        raise ConfigError(e.problems)
    return config
