"""Prometheus metrics of the stream service (``atas_stream_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

OPEN = Gauge("atas_stream_connections", "Open SSE streams in this process")
CONNECTS = Counter("atas_stream_connects_total", "SSE streams opened, by kind (fresh, resume)", ["kind"])
REJECTED = Counter("atas_stream_rejected_total", "SSE requests refused before streaming, by reason",
                   ["reason"])
STALLED_ABORTS = Counter(
    "atas_stream_stalled_aborts_total",
    "Connections aborted because the peer did not read its final event within STREAM_WRITE_TIMEOUT_SECONDS",
)
DISCONNECTS = Counter(
    "atas_stream_disconnects_total",
    "SSE streams closed, by reason (client, slow_consumer, token_expired, shutdown, error)",
    ["reason"],
)
EVENTS_SENT = Counter("atas_stream_events_sent_total", "Events written to SSE clients, by path (live, replay)",
                      ["path"])
# Bound once: labels() on the per-write path costs at thousands of clients.
SENT_LIVE = EVENTS_SENT.labels("live")
SENT_REPLAY = EVENTS_SENT.labels("replay")
RESUMES = Counter(
    "atas_stream_resumes_total",
    "Catch-ups from history (at connect with Last-Event-ID, or after a Pub/Sub outage), by outcome "
    "(replayed, reset)",
    ["outcome"],
)
FANOUT_LATENCY = Histogram(
    "atas_stream_fanout_latency_seconds",
    "Event time (occurred_at) to its write on the last local client: one sample per fan-out round, "
    "from the round's oldest event (the slowest client of this process)",
    # finer around the 100 ms a live monitor should stay under
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PUBSUB_UP = Gauge("atas_stream_pubsub_connected", "1 while this process holds its Redis Pub/Sub connection")
SUBSCRIBED = Gauge("atas_stream_subscribed_projects", "Project channels this process is subscribed to")
BRIDGE_ASSIGNED = Gauge("atas_stream_bridge_assigned", "1 while this process's bridge owns Kafka partitions")
BRIDGE_EVENTS = Counter(
    "atas_stream_bridge_events_total",
    "Events handled by the Kafka→Redis bridge, by outcome (published, duplicate, invalid, local_only)",
    ["outcome"],
)
BRIDGE_LAG = Histogram(
    "atas_stream_bridge_lag_seconds", "Kafka record timestamp to its Redis write, per batch (oldest record)",
    buckets=_LATENCY_BUCKETS,
)
BRIDGE_PENDING = Gauge("atas_stream_bridge_pending", "Events consumed but not yet written to Redis (Redis down)")
