"""The query service: ``setup(app)`` adds the read API, its cache, the rollup worker and the
invalidation consumer.

Composable with ingest and stream on one app (``atas dev``): only GET routes, its own app keys,
readiness check names and OpenAPI fragment, no middleware.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from atas.common.app import SETTINGS, add_heartbeat, add_openapi, drop_heartbeat
from atas.common.engines import ENGINES, add_schema_gate
from atas.common.logging import get_logger

from atas.common.storage import install_storage

from . import attachments
from .cache import MemoryCacheEngine, RedisCacheEngine, ResponseCache
from .config import QueryConfig
from .invalidation import Invalidator
from .openapi import fragment
from .repository import QueryRepository
from .rollups import RollupWorker
from .routes import QUERY_STATE, ROUTES, QueryState
from .web import setup_web

log = get_logger(__name__)

STOP_TIMEOUT_S = 10.0


def setup(app: web.Application, config: QueryConfig | None = None) -> None:
    """Register the query routes, the cache engine and the invalidation consumer on ``app``.

    ``install_engines`` must have run on ``app`` first (its context opens the pool and Redis).
    ``config`` is parsed by the entry point (``atas serve``, ``atas dev``); without one, the defaults.
    """
    config = config if config is not None else QueryConfig()
    state = QueryState(config, ResponseCache(MemoryCacheEngine(config.memory_cache_entries),
                                             lock_ttl_ms=config.lock_ttl_ms, retry_ms=config.redis_retry_ms,
                                             near_ms=config.near_cache_ms))
    app[QUERY_STATE] = state
    for path, handler in ROUTES:
        app.router.add_get(path, handler, allow_head=False)
    install_storage(app, app[SETTINGS].storage, jwt_secret=app[SETTINGS].jwt_secret)
    attachments.setup(app)
    add_openapi(app, fragment())
    # Not ready until the rollup tables (V020) and the ingest tables it reads are migrated.
    add_schema_gate(app, "query")
    setup_web(app)  # the dashboard: static files and browser sign-in (web.py)

    async def context(app_: web.Application):
        engines = app_[ENGINES]
        if engines.redis is not None:
            state.cache.engine = RedisCacheEngine(engines.redis)
        if engines.pool is not None:
            state.repo = QueryRepository(engines.pool)
        tasks = []
        beats = []
        stop = asyncio.Event()
        if engines.pool is not None:
            # After each round, the per-test answers of the projects it touched are invalidated.
            beats.append(add_heartbeat(app_, "query-rollups"))
            worker = RollupWorker(engines.pool, interval_s=config.rollup_interval_ms / 1000,
                                  batch=config.rollup_batch, on_applied=state.cache.rollups_applied,
                                  heartbeat=beats[-1])
            tasks.append(asyncio.create_task(worker.run(stop), name="atas-query-rollups"))
        if config.invalidation_enabled:
            beats.append(add_heartbeat(app_, "query-invalidator"))
            invalidator = Invalidator(engines.bus, state.cache, heartbeat=beats[-1])
            state.invalidator = invalidator
            tasks.append(asyncio.create_task(invalidator.run(stop), name="atas-query-invalidator"))
        log.info("query service ready", cache="redis" if engines.redis is not None else "in-process",
                 invalidation=config.invalidation_enabled)
        yield
        for beat in beats:
            drop_heartbeat(app_, beat)
        stop.set()
        for task in tasks:
            try:
                await asyncio.wait_for(task, STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("background task did not stop in time; cancelled", task=task.get_name())
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.cleanup_ctx.append(context)
