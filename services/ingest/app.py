"""``atas.ingest.app``: wires the ingest routes, the outbox relay and partition upkeep into an app.

Composable (``atas dev`` puts ingest, query and stream on one app): no middleware of its own,
unique app keys, POST routes only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from atas.common.app import SETTINGS, add_heartbeat, add_openapi, drop_heartbeat
from atas.common.config import Settings
from atas.common.engines import ENGINES, add_schema_gate
from atas.common.heartbeat import NO_BEAT, Heartbeat, idle
from atas.common.logging import get_logger

from atas.common.storage import install_storage

from . import attachments, openapi
from .config import IngestConfig
from .relay import OutboxRelay
from .routes import INGEST_CONFIG, add_routes

log = get_logger(__name__)

# Months of result partitions kept ready behind and ahead of now (see V001).
PARTITIONS_BACK, PARTITIONS_AHEAD = 1, 3
_PARTITION_RETRY_S = 60.0


@dataclass
class IngestState:
    """Mutable per-app state (the app itself is frozen once it starts)."""

    relay: OutboxRelay | None = None


INGEST_STATE = web.AppKey("atas_ingest_state", IngestState)


def client_max_size(config: IngestConfig) -> int:
    """The body limit of an ingest-only app (INGEST_MAX_BODY_BYTES)."""
    return config.max_body_bytes


# Creating a partition locks `results` exclusively; behind a long query that lock would wait, and
# every insert would queue behind the waiting lock. Give up after this instead, and retry later.
PARTITION_LOCK_TIMEOUT = "3s"


async def ensure_partitions(pool, back: int, ahead: int) -> int:
    """Create missing monthly result partitions; raises LockNotAvailableError rather than stalling
    ingest behind a long-running query on ``results``."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'")
            return await conn.fetchval("SELECT atas_ensure_result_partitions($1, $2)", back, ahead)


async def _keep_partitions(app: web.Application, interval_s: float, heartbeat: Heartbeat = NO_BEAT) -> None:
    """Create the coming months' result partitions now and every ``interval_s`` (idempotent)."""
    while True:
        heartbeat.beat()
        pool = app[ENGINES].pool
        delay = interval_s
        try:
            if pool is None:
                raise RuntimeError("database pool not open")
            created = await ensure_partitions(pool, PARTITIONS_BACK, PARTITIONS_AHEAD)
            if created:
                log.info("result partitions created", count=created)
        except Exception as exc:  # noqa: BLE001 - PostgreSQL down at start: retry soon, don't crash
            log.warning("could not ensure result partitions; retrying", error=f"{type(exc).__name__}: {exc}")
            delay = min(interval_s, _PARTITION_RETRY_S)
        await idle(heartbeat, delay)


def setup(app: web.Application, config: IngestConfig | None = None) -> None:
    """Add the ingest API, its OpenAPI fragment, the outbox relay and partition upkeep to ``app``.

    ``config`` is parsed by the entry point (``atas serve``, ``atas dev``); without one, the defaults.
    """
    config = config if config is not None else IngestConfig()
    app[INGEST_CONFIG] = config
    state = app[INGEST_STATE] = IngestState()
    add_routes(app)
    install_storage(app, app[SETTINGS].storage, jwt_secret=app[SETTINGS].jwt_secret)
    attachments.setup(app)
    add_openapi(app, openapi.fragment(config))
    # Not ready until the migrations this code writes against (V001, V01x) are applied.
    add_schema_gate(app, "ingest")

    async def background(app_: web.Application):
        settings: Settings = app_[SETTINGS]
        engines = app_[ENGINES]
        partitions = None
        beats = []
        if settings.db is not None:
            beats.append(add_heartbeat(app_, "ingest-partitions"))
            partitions = asyncio.create_task(_keep_partitions(app_, config.partition_interval_s, beats[-1]),
                                             name="ingest-partitions")
            if config.relay_enabled:
                beats.append(add_heartbeat(app_, "outbox-relay"))
                state.relay = OutboxRelay(pool=lambda: engines.pool, dsn=settings.db.dsn, bus=engines.bus,
                                          config=config, heartbeat=beats[-1])
                state.relay.start()
        yield
        for beat in beats:
            drop_heartbeat(app_, beat)
        if partitions is not None:
            partitions.cancel()
            await asyncio.gather(partitions, return_exceptions=True)
        if state.relay is not None:
            await state.relay.stop()

    app.cleanup_ctx.append(background)
