"""Configuration of the stream service (``STREAM_*`` variables), parsed once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from atas.common.config import ConfigError, EnvReader


class StreamConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Knobs of the live path. Tests build this directly; ``load_config`` reads the environment."""

    # Events kept per project for Last-Event-ID resume. A client away longer than it takes the
    # project to produce this many events gets a reset. 10k events of ~1 KB is ~10 MB per busy
    # project in Redis; raise it for longer offline windows.
    history_max_len: int = 10_000
    # A project's history expires after this long without a new event (refreshed on every append).
    history_ttl_s: int = 86_400
    # How long an event id is remembered to drop Kafka redeliveries. Must cover the longest
    # plausible redelivery (a consumer stuck before commit, a rebalance): an hour is plenty.
    dedupe_ttl_s: int = 3_600
    # Comment sent after this long without data, so proxies and load balancers keep the
    # connection (most idle-timeout at 60 s) and clients notice a dead one.
    heartbeat_s: float = 15.0
    # The `retry:` advice sent at connect: how long EventSource waits before reconnecting.
    retry_ms: int = 2_000
    # Events buffered per client while its socket is slow. At the cap the client is cut off with a
    # final event (it reconnects and resumes) instead of holding memory for it or slowing others.
    client_queue: int = 1_000
    # Open streams per process; beyond it new ones get 503 + Retry-After (the balancer tries
    # another pod). Each idle stream costs ~ tens of KB and one file descriptor.
    max_connections: int = 10_000
    # Seconds a 503'd client is told to wait.
    retry_after_s: int = 5
    # On SIGTERM, open streams are closed spread over this window (capped by the drain window), so
    # thousands of clients do not reconnect to the remaining pods in the same instant.
    close_spread_s: float = 10.0
    # A socket write that does not complete in this time marks the client as stalled.
    write_timeout_s: float = 10.0
    # Events per history read while replaying a resume.
    replay_page: int = 500
    # A project's Pub/Sub channel stays subscribed this long after its last local client left, so
    # reconnect churn does not turn into SUBSCRIBE/UNSUBSCRIBE churn.
    unsubscribe_linger_s: float = 30.0
    # Kafka consumer group of the bridge, and how many records it writes to Redis per round trip.
    bridge_group: str = "atas-stream-bridge"
    bridge_batch: int = 500
    # Set false to run a process that only serves streams (the bridge runs elsewhere).
    bridge_enabled: bool = True
    # Prefix of every Redis key and channel the service uses.
    redis_prefix: str = "atas:stream:"


def load_config(env: Mapping[str, str] | None = None) -> StreamConfig:
    """Read ``STREAM_*`` variables; raise :class:`ConfigError` naming each bad one."""
    e = EnvReader(os.environ if env is None else env)
    d = StreamConfig()  # the defaults live in the struct, once
    bridge_enabled = e.bool("STREAM_BRIDGE_ENABLED", d.bridge_enabled)
    config = StreamConfig(
        history_max_len=e.int("STREAM_HISTORY_MAX_LEN", d.history_max_len, lo=1, hi=10_000_000),
        history_ttl_s=e.int("STREAM_HISTORY_TTL_SECONDS", d.history_ttl_s, lo=1),
        dedupe_ttl_s=e.int("STREAM_DEDUPE_TTL_SECONDS", d.dedupe_ttl_s, lo=1),
        heartbeat_s=e.float("STREAM_HEARTBEAT_SECONDS", d.heartbeat_s, lo=0.05),
        retry_ms=e.int("STREAM_RETRY_MS", d.retry_ms, lo=0),
        client_queue=e.int("STREAM_CLIENT_QUEUE", d.client_queue, lo=1),
        max_connections=e.int("STREAM_MAX_CONNECTIONS", d.max_connections, lo=1),
        retry_after_s=e.int("STREAM_RETRY_AFTER_SECONDS", d.retry_after_s, lo=1),
        close_spread_s=e.float("STREAM_CLOSE_SPREAD_SECONDS", d.close_spread_s),
        write_timeout_s=e.float("STREAM_WRITE_TIMEOUT_SECONDS", d.write_timeout_s, lo=0.1),
        replay_page=e.int("STREAM_REPLAY_PAGE", d.replay_page, lo=1, hi=10_000),
        unsubscribe_linger_s=e.float("STREAM_UNSUBSCRIBE_LINGER_SECONDS", d.unsubscribe_linger_s),
        bridge_group=e.str("STREAM_BRIDGE_GROUP", d.bridge_group) or d.bridge_group,
        bridge_batch=e.int("STREAM_BRIDGE_BATCH", d.bridge_batch, lo=1, hi=10_000),
        bridge_enabled=bridge_enabled,
        redis_prefix=e.str("STREAM_REDIS_PREFIX", d.redis_prefix) or d.redis_prefix,
    )
    if e.problems:
        raise ConfigError(e.problems)
    return config
