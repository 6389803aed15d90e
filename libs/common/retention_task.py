"""Retention's metrics, and the daily run inside ``atas dev``.

In production the ``atas-retention`` CronJob runs ``atas retention``, a process too short-lived to
be scraped: it prints the same numbers in its summary (and ``--json``). Inside ``atas dev`` the
daily task counts into these metrics, which ``/metrics`` of that process exposes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from prometheus_client import Counter, Gauge

from atas.common.logging import get_logger

log = get_logger(__name__)

ROWS_REMOVED = Counter("atas_retention_rows_removed_total",
                       "Rows removed by retention, by table (attachment_objects: stored objects)", ["table"])
BYTES_REMOVED = Counter("atas_retention_bytes_removed_total",
                        "Bytes removed by retention, by table: on-disk size of dropped partitions, stored "
                        "size of deleted rows, size of deleted objects", ["table"])
LAST_SUCCESS = Gauge("atas_retention_last_success_timestamp_seconds",
                     "When the last retention run finished (Unix time)")

# `atas dev` runs retention this long after start (not at once: start-up, --demo data and a first
# look at the dashboards come first), then once a day.
DEV_FIRST_RUN_S = 300.0
DEV_INTERVAL_S = 86_400.0


def record(report) -> None:
    """Count a finished (not dry) run of :class:`atas.common.retention.Report` in the metrics."""
    for table, tally in report.removed.items():
        ROWS_REMOVED.labels(table).inc(tally.rows)
        BYTES_REMOVED.labels(table).inc(tally.bytes)
    LAST_SUCCESS.set_to_current_time()


def daily_retention(dsn: str, days: int, *, storage=None, jwt_secret: str = "",
                    first_run_s: float = DEV_FIRST_RUN_S, interval_s: float = DEV_INTERVAL_S) -> Callable[[object], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that runs retention on ``dsn`` every ``interval_s`` while the app runs.

    A failed run is logged and tried again at the next interval; stopping the app cancels a run
    in progress (each of its steps is a transaction, so nothing is left half-done).
    """

    async def loop() -> None:
        from atas.common.retention import run_retention

        await asyncio.sleep(first_run_s)
        while True:
            try:
                report = await run_retention(dsn, days=days, storage=storage, jwt_secret=jwt_secret)
                log.info("retention run finished", **{t: v.rows for t, v in report.removed.items()},
                         partitions_dropped=len(report.partitions_dropped), deferred=len(report.deferred),
                         seconds=round(report.seconds, 2))
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: try again tomorrow, keep serving
                log.warning("retention run failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(interval_s)

    async def ctx(_app) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(), name="retention-daily")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return ctx
