"""Wiring of the stream service: ``setup(app)`` adds ``GET /v1/stream``, the bridge and the fan-out.

Transport per seam, chosen at startup from ``app[ENGINES]``: with Redis, the history is a capped
Redis Stream per project and the fan-out one Pub/Sub connection per process; without it (``atas
dev``), both are in-process. The bridge always consumes through ``ENGINES.bus`` (Kafka or the
MemoryBus) — the same code either way.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from atas.common.app import HEARTBEATS, SETTINGS, add_heartbeat, add_openapi, drop_heartbeat
from atas.common.bus import KafkaBus
from atas.common.engines import ENGINES
from atas.common.logging import get_logger
from atas.common.redis import create_redis

from .bridge import Bridge
from .config import StreamConfig
from .fanout import MemoryFanout, RedisFanout
from .history import MemoryHistory, RedisHistory
from .openapi import FRAGMENT
from .routes import stream
from .sse import END_SHUTDOWN
from .state import STREAM, StreamState

log = get_logger(__name__)


def setup(app: web.Application, config: StreamConfig | None = None) -> None:
    """Add the stream service to ``app`` (made by ``create_app``, with engines installed).

    ``config`` is parsed by the entry point (``atas serve``, ``atas dev``); without one, the defaults.
    No readiness check of its own: it answers without PostgreSQL (it never uses it) and without
    Redis (a degraded mode: live updates reach this pod's clients only), and a stream pod taken out
    of the balancer would drop every live connection it holds.
    """
    state = StreamState(config=config if config is not None else StreamConfig())
    app[STREAM] = state
    app.router.add_get("/v1/stream", stream)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    add_openapi(app, FRAGMENT)


async def _lifecycle(app: web.Application):
    state = app[STREAM]
    cfg = state.config
    engines = app[ENGINES]
    settings = app[SETTINGS]
    def redis_history(redis) -> RedisHistory:
        return RedisHistory(redis, prefix=cfg.redis_prefix, max_len=cfg.history_max_len,
                            ttl_s=cfg.history_ttl_s, dedupe_ttl_s=cfg.dedupe_ttl_s)

    if engines.redis is not None and settings.redis is not None:
        state.history = redis_history(engines.redis)
        state.fanout = RedisFanout(settings.redis, state.hub, channel_prefix=cfg.redis_prefix + "c:",
                                   linger_s=cfg.unsubscribe_linger_s, heartbeat=add_heartbeat(app, "stream-pubsub"))
    else:
        state.history = MemoryHistory(max_len=cfg.history_max_len, publish=state.hub.deliver_one)
        state.fanout = MemoryFanout(state.hub)
    state.hub.fanout = state.fanout
    state.ticker = asyncio.create_task(state.hub.tick(cfg.heartbeat_s, add_heartbeat(app, "stream-ticker")),
                                       name="stream-ticker")
    await state.fanout.start()
    if cfg.bridge_enabled:
        thread_history = None
        if isinstance(state.history, RedisHistory) and isinstance(engines.bus, KafkaBus):
            def thread_history():  # runs on the bridge's thread: a Redis connection of its own
                redis = create_redis(settings.redis)
                return redis_history(redis), redis.aclose
        state.bridge = Bridge(engines.bus, state.history, state.hub, group=cfg.bridge_group,
                              batch=cfg.bridge_batch, new_group_since_s=cfg.dedupe_ttl_s,
                              thread_history=thread_history, heartbeat=add_heartbeat(app, "stream-bridge"))
        await state.bridge.start()
    log.info("stream service ready", history="redis" if engines.redis is not None else "in-process",
             bridge=cfg.bridge_enabled, max_connections=cfg.max_connections)
    try:
        yield
    finally:
        for name in ("stream-pubsub", "stream-ticker", "stream-bridge"):
            beat = app[HEARTBEATS].get(name)
            if beat is not None:
                drop_heartbeat(app, beat)
        for task in (state.closer, state.ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if state.bridge is not None:
            await state.bridge.stop()
        await state.fanout.stop()


async def _on_shutdown(app: web.Application) -> None:
    """Stop taking streams and close the open ones spread over the drain window.

    Runs after the listener closed; the server then waits up to ``drain_seconds`` for handlers.
    Closing everything at once would make every client reconnect to the remaining pods in the
    same instant; spreading over most of the window turns that into a steady trickle.
    """
    state = app[STREAM]
    state.hub.draining = True
    clients = state.hub.all_clients()
    if not clients:
        return
    window = max(0.0, min(state.config.close_spread_s, app[SETTINGS].drain_seconds * 0.8))
    log.info("closing streams", count=len(clients), window_s=window)

    async def close_spread() -> None:
        step = window / len(clients)
        for i, client in enumerate(clients):
            client.end(END_SHUTDOWN)
            if step and i + 1 < len(clients):
                await asyncio.sleep(step)

    state.closer = asyncio.create_task(close_spread(), name="stream-close-spread")
