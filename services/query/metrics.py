"""Prometheus metrics of the query service (exposed by the common ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CACHE_REQUESTS = Counter(
    "atas_query_cache_requests_total",
    "Cacheable reads by endpoint kind and outcome: hit (served from cache), miss (aggregated and "
    "stored), bypass (cache unavailable, answered from PostgreSQL)",
    ["kind", "outcome"],
)
AGGREGATIONS = Counter(
    "atas_query_aggregations_total",
    "Queries run against PostgreSQL to fill a cacheable response (single flight: one per key and TTL)",
    ["kind"],
)
AGGREGATION_SECONDS = Histogram(
    "atas_query_aggregation_seconds", "Time spent computing a cacheable response", ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CACHE_ERRORS = Counter("atas_query_cache_errors_total", "Redis errors seen by the cache", ["operation"])
INVALIDATIONS = Counter(
    "atas_query_invalidations_total", "Cache entries invalidated by events, by kind", ["kind"],
)
INVALIDATION_EVENTS = Counter(
    "atas_query_invalidation_events_total", "Events read by the invalidation consumer, by outcome",
    ["outcome"],
)
ROLLUP_APPLIED = Counter("atas_query_rollup_deltas_total", "Queued per-test deltas applied to the rollups")
ROLLUP_SECONDS = Histogram(
    "atas_query_rollup_round_seconds", "Duration of rollup worker rounds that applied deltas",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ROLLUP_INVALIDATIONS = Counter(
    "atas_query_rollup_invalidations_total",
    "Projects whose cached per-test answers (overview, tests/*) a rollup round made stale and the "
    "worker then invalidated (one per project and round)",
)
