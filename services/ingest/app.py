"""``atas.ingest.app``: wires the ingest routes, the outbox relay and partition upkeep into an app.

Composable (``atas dev`` puts ingest, query and stream on one app): no middleware of its own,
unique app keys, POST routes only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from atas.common.app import SETTINGS, add_openapi, add_readiness_check
from atas.common.config import Settings
from atas.common.engines import ENGINES
from atas.common.logging import get_logger

from atas.common.storage import install_storage

from . import attachments, openapi
from .config import IngestConfig
from .relay import OutboxRelay
from .routes import INGEST_CONFIG, add_routes

log = get_logger(__name__)

# The newest migration this code needs (V016: the attachments table).
REQUIRED_SCHEMA_VERSION = 16
# Months of result partitions kept ready behind and ahead of now (see V001).
PARTITIONS_BACK, PARTITIONS_AHEAD = 1, 3
_PARTITION_RETRY_S = 60.0


@dataclass
class IngestState:
    """Mutable per-app state (the app itself is frozen once it starts)."""

    relay: OutboxRelay | None = None
    schema_ok: bool = False


INGEST_STATE = web.AppKey("atas_ingest_state", IngestState)


def client_max_size(settings: Settings) -> int:
    """The body limit of an ingest-only app (INGEST_MAX_BODY_BYTES)."""
    return IngestConfig.from_env().max_body_bytes


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


async def _keep_partitions(app: web.Application, interval_s: float) -> None:
    """Create the coming months' result partitions now and every ``interval_s`` (idempotent)."""
    while True:
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
        await asyncio.sleep(delay)


def setup(app: web.Application, config: IngestConfig | None = None) -> None:
    """Add the ingest API, its OpenAPI fragment, the outbox relay and partition upkeep to ``app``."""
    config = config or IngestConfig.from_env()
    app[INGEST_CONFIG] = config
    state = app[INGEST_STATE] = IngestState()
    add_routes(app)
    install_storage(app, app[SETTINGS].storage, jwt_secret=app[SETTINGS].jwt_secret)
    attachments.setup(app)
    add_openapi(app, openapi.fragment(config))

    async def schema_ready() -> None:
        """Not ready until the migrations this code writes against are applied (`atas migrate`)."""
        if state.schema_ok:
            return
        pool = app[ENGINES].pool
        if pool is None:
            raise RuntimeError("database pool not open")
        version = await pool.fetchval("SELECT max(version) FROM atas_schema_history WHERE version < 20")
        if (version or 0) < REQUIRED_SCHEMA_VERSION:
            raise RuntimeError(f"database schema is at V{version or 0:03d}, ingest needs "
                               f"V{REQUIRED_SCHEMA_VERSION:03d}: run `atas migrate`")
        state.schema_ok = True

    if app[SETTINGS].db is not None:
        add_readiness_check(app, "ingest_schema", schema_ready)

    async def background(app_: web.Application):
        settings: Settings = app_[SETTINGS]
        engines = app_[ENGINES]
        partitions = None
        if settings.db is not None:
            partitions = asyncio.create_task(_keep_partitions(app_, config.partition_interval_s),
                                             name="ingest-partitions")
            if config.relay_enabled:
                state.relay = OutboxRelay(pool=lambda: engines.pool, dsn=settings.db.dsn, bus=engines.bus,
                                          config=config)
                state.relay.start()
        yield
        if partitions is not None:
            partitions.cancel()
            await asyncio.gather(partitions, return_exceptions=True)
        if state.relay is not None:
            await state.relay.stop()

    app.cleanup_ctx.append(background)
