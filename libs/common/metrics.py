"""Prometheus metrics shared by every service, exposed at ``/metrics``.

Metrics live in the default registry so that libraries' collectors (process, GC) come along. Route
labels use the route's canonical path (``/v1/executions/{id}``), never the raw URL, to keep
cardinality bounded.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

HTTP_REQUESTS = Counter(
    "atas_http_requests_total", "HTTP requests by service, route, method and status",
    ["service", "route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "atas_http_request_duration_seconds", "HTTP request latency by service and route",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_IN_FLIGHT = Gauge("atas_http_requests_in_flight", "Requests being handled", ["service"])
READY = Gauge("atas_ready", "1 when the process reports ready, 0 while draining or degraded", ["service"])


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
LOOP_LAST_BEAT = Gauge(
    "atas_loop_last_beat_timestamp_seconds",
    "Unix time of each background loop's last heartbeat; /healthz fails when one is older than "
    "HEALTH_LOOP_STALL_SECONDS", ["loop"],
)
