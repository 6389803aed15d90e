"""The transports behind the seams, chosen once per process.

``atas serve`` uses Kafka for events and Redis for cache and fan-out; ``atas dev`` swaps in the
in-process engines for whichever of them is not configured. Business code asks for ``ENGINES`` and
never checks which mode it runs in, except through the one attribute each seam reads
(``redis is None`` → in-process cache / fan-out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from .app import SETTINGS, add_readiness_check
from .bus import EventBus, KafkaBus, MemoryBus
from .config import Settings
from .db import create_pool
from .db import warm_pool as warm_db_pool
from .logging import get_logger
from .probe import PgProbe, versions_needed
from .redis import create_redis
from .redis import warm_pool as warm_redis_pool

log = get_logger(__name__)


@dataclass
class Engines:
    bus: EventBus
    pool: asyncpg.Pool | None = None
    redis: Redis | None = None
    probe: PgProbe | None = None  # readiness, on a connection of its own (not the request pool)
    extras: dict = field(default_factory=dict)  # per-seam in-process engines (dev mode)

    @property
    def kafka(self) -> bool:
        return isinstance(self.bus, KafkaBus)


ENGINES = web.AppKey("atas_engines", Engines)


def make_bus(settings: Settings) -> EventBus:
    if settings.kafka is not None:
        return KafkaBus(settings.kafka)
    return MemoryBus()


def install_engines(app: web.Application, *, application_name: str, bus: EventBus | None = None) -> Engines:
    """Register the engines and a cleanup context that opens and closes the pool and Redis client.

    Must be installed before the services' own cleanup contexts, so it is torn down after them.
    """
    settings: Settings = app[SETTINGS]
    engines = Engines(bus=bus or make_bus(settings))
    app[ENGINES] = engines

    async def ctx(app_: web.Application):
        if settings.db is not None:
            # Created empty, so that the service starts while PostgreSQL is down; DB_POOL_MIN
            # connections are then opened when it is up (the first requests do not pay for them).
            engines.pool = await create_pool(settings.db, application_name=application_name, min_size=0)
            warmed = await warm_db_pool(engines.pool, settings.db.pool_min, timeout_s=2.0)
            if warmed < settings.db.pool_min:
                log.warning("postgres unreachable at start; connections will open on demand",
                            opened=warmed, wanted=settings.db.pool_min)
        if settings.redis is not None:
            engines.redis = create_redis(settings.redis)
            await warm_redis_pool(engines.redis, settings.redis)
        log.info("engines ready", db=settings.db.redacted() if settings.db else None,
                 redis=f"{settings.redis.host}:{settings.redis.port}" if settings.redis else "in-process",
                 events=settings.kafka.bootstrap_servers if settings.kafka else "in-process")
        yield
        if engines.redis is not None:
            await engines.redis.aclose()
        if engines.pool is not None:
            await engines.pool.close()
        if engines.probe is not None:
            await engines.probe.close()

    app.cleanup_ctx.append(ctx)

    # Only a process given a database (ingest, query, atas dev) depends on it: the stream service
    # is started without one and stays ready through a PostgreSQL outage.
    if settings.db is not None:
        engines.probe = PgProbe(settings.db.dsn, application_name=application_name)
        add_readiness_check(app, "postgres", engines.probe.ping)
    return engines


def add_schema_gate(app: web.Application, role: str) -> None:
    """Not ready until every migration ``role`` depends on is applied (see :mod:`.probe`)."""
    engines: Engines = app[ENGINES]
    if engines.probe is None:
        return
    probe = engines.probe
    needed = versions_needed(role)
    applied = False

    async def schema_ready() -> None:
        nonlocal applied
        if applied:  # migrations are never undone under a running process
            return
        missing = await probe.missing_versions(needed)
        if missing:
            raise RuntimeError(f"{role} needs migrations {', '.join(f'V{v:03d}' for v in missing)}: "
                               "run `atas migrate`")
        applied = True

    add_readiness_check(app, f"{role}_schema", schema_ready)
