"""Prometheus metrics of the write path and the outbox relay (requests by route and status come
from the shared middleware)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RESULTS_INGESTED = Counter(
    "atas_ingest_results_total", "Results stored, by status", ["status"])
RESULTS_DUPLICATE = Counter(
    "atas_ingest_results_duplicate_total", "Results sent again (retries) and not stored twice")
STATUS_REDERIVED = Counter(
    "atas_ingest_status_rederived_total",
    "Derived execution statuses that results arriving after finish changed (each emits execution.finished)")
BATCH_SIZE = Histogram(
    "atas_ingest_batch_size", "Results per accepted batch request",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000))
WRITE_LATENCY = Histogram(
    "atas_ingest_write_seconds", "Duration of the write transaction, by operation", ["op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
OUTBOX_BACKLOG = Gauge(
    "atas_outbox_backlog", "Events waiting in the outbox (sampled by the relay)")
OUTBOX_AGE = Gauge(
    "atas_outbox_oldest_age_seconds", "Age of the oldest event waiting in the outbox (0 when empty)")
RELAY_PUBLISHED = Counter(
    "atas_relay_events_published_total", "Events the relay published and deleted from the outbox")
RELAY_DEAD = Counter(
    "atas_relay_dead_events_total", "Events moved to outbox_dead because the bus can never accept them")
RELAY_FAILURES = Counter(
    "atas_relay_failures_total", "Relay rounds that failed, by stage", ["stage"])
RELAY_PUBLISH_LATENCY = Histogram(
    "atas_relay_publish_seconds", "Time from claim to acknowledged publish of one relay batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
