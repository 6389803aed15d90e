"""Query service configuration: a frozen struct read once from the environment.

The cache TTLs themselves are common settings (``CACHE_TTL_*`` in :class:`atas.common.config.Settings`);
what is here only concerns the read path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from atas.common.config import ConfigError, EnvReader


class QueryConfig(msgspec.Struct, frozen=True):
    """Knobs of the query service. Tests construct it directly."""

    # The widest `from`..`to` a request may ask for. Per-test aggregates cost days x tests, so an
    # unbounded range is an unbounded query; 400 days covers "this year vs last year" dashboards.
    max_range_days: int = 400
    # Range used when a request sends neither `from` nor `to`: the last 7 days.
    default_range_days: int = 7
    # Default and maximum page size of the list endpoints (keyset pages).
    default_page_size: int = 50
    max_page_size: int = 200
    # TTL of per-test aggregates (failing, slowest, flaky): as cheap to recompute as trends.
    cache_ttl_tests: int = 120
    # A miss holds a Redis lock this long while it aggregates; other pods wait for the value instead
    # of running the same query. Longer than the slowest aggregation, short enough that a crashed
    # holder does not stall its waiters for long (they then aggregate themselves).
    lock_ttl_ms: int = 5000
    # After a Redis error, requests skip Redis for this long (X-Cache: bypass) instead of each one
    # paying a connection timeout; then the next request tries again, so recovery is automatic.
    redis_retry_ms: int = 1000
    # How long a process may serve a shared-cache entry it just read without asking Redis again
    # (overview, trends and per-test lists only; never status or recent pages, which events
    # invalidate). Adds at most this much staleness to a TTL of a minute or more; 0 turns it off.
    near_cache_ms: int = 1000
    # Entries the in-process cache engine keeps at most (atas dev, no Redis); least recently used go.
    memory_cache_entries: int = 10_000
    # Rollup worker: how often it applies the deltas ingest queued (per-test dashboards lag ingest by
    # about this much), and how many queue rows (about one per ingest batch) a round claims at most.
    rollup_interval_ms: int = 500
    rollup_batch: int = 1000
    # Whether this process runs the Kafka consumer that invalidates status and recent-page entries.
    invalidation_enabled: bool = True


def load_config(env: Mapping[str, str] | None = None) -> QueryConfig:
    """Read :class:`QueryConfig` from the environment, or raise :class:`ConfigError`."""
    e = EnvReader(os.environ if env is None else env)
    d = QueryConfig()  # the defaults live in the struct, once
    config = QueryConfig(
        max_range_days=e.int("QUERY_MAX_RANGE_DAYS", d.max_range_days, lo=1, hi=3660),
        default_range_days=e.int("QUERY_DEFAULT_RANGE_DAYS", d.default_range_days, lo=1, hi=3660),
        default_page_size=e.int("QUERY_DEFAULT_PAGE_SIZE", d.default_page_size, lo=1, hi=200),
        max_page_size=e.int("QUERY_MAX_PAGE_SIZE", d.max_page_size, lo=1, hi=200),
        cache_ttl_tests=e.int("CACHE_TTL_TESTS", d.cache_ttl_tests, lo=0),
        lock_ttl_ms=e.int("QUERY_CACHE_LOCK_MS", d.lock_ttl_ms, lo=100, hi=120_000),
        redis_retry_ms=e.int("QUERY_REDIS_RETRY_MS", d.redis_retry_ms, lo=0, hi=60_000),
        near_cache_ms=e.int("QUERY_NEAR_CACHE_MS", d.near_cache_ms, lo=0, hi=60_000),
        memory_cache_entries=e.int("QUERY_MEMORY_CACHE_ENTRIES", d.memory_cache_entries, lo=1),
        rollup_interval_ms=e.int("QUERY_ROLLUP_INTERVAL_MS", d.rollup_interval_ms, lo=10, hi=600_000),
        rollup_batch=e.int("QUERY_ROLLUP_BATCH", d.rollup_batch, lo=1, hi=100_000),
        invalidation_enabled=e.bool("QUERY_INVALIDATION", d.invalidation_enabled),
    )
    if config.default_range_days > config.max_range_days:
        e.problems.append(f"QUERY_DEFAULT_RANGE_DAYS ({config.default_range_days}) must not exceed "
                          f"QUERY_MAX_RANGE_DAYS ({config.max_range_days})")
    if config.default_page_size > config.max_page_size:
        e.problems.append(f"QUERY_DEFAULT_PAGE_SIZE ({config.default_page_size}) must not exceed "
                          f"QUERY_MAX_PAGE_SIZE ({config.max_page_size})")
    if e.problems:
        raise ConfigError(e.problems)
    return config

