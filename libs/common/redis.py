"""Redis client factory: one bounded, blocking pool per process sized by ``REDIS_POOL_*``.

``BlockingConnectionPool`` makes a caller wait (up to ``REDIS_TIMEOUT``) for a free connection
instead of failing when all ``REDIS_POOL_MAX_ACTIVE`` are busy. Idle connections beyond
``REDIS_POOL_MAX_IDLE`` are closed on release; ``REDIS_POOL_MIN_IDLE`` are opened at start.
"""

from __future__ import annotations

import asyncio
import ssl

from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection

from .config import RedisSettings
from .logging import get_logger

log = get_logger(__name__)


class BoundedIdlePool(BlockingConnectionPool):
    """A blocking pool that also honours a maximum number of idle connections."""

    def __init__(self, *args, max_idle: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_idle = max_idle

    async def release(self, connection) -> None:
        await super().release(connection)
        extra = None
        idle = getattr(self, "_available_connections", None)
        if isinstance(idle, list) and len(idle) > self.max_idle:
            extra = idle.pop(0)
        if extra is not None:
            await extra.disconnect()


def ssl_context(settings: RedisSettings) -> ssl.SSLContext | None:
    """For ``REDIS_TLS``: verify the server's certificate (``REDIS_TLS_CA_FILE``, else the system's
    CAs) and that it names ``REDIS_HOST``. None without TLS."""
    if not settings.tls:
        return None
    return ssl.create_default_context(cafile=settings.tls_ca_file)


def create_redis(settings: RedisSettings, *, decode_responses: bool = False) -> Redis:
    timeout = settings.timeout_ms / 1000
    tls = {}
    if settings.tls:
        tls = {"connection_class": SSLConnection, "ssl_cert_reqs": "required", "ssl_check_hostname": True,
               "ssl_ca_certs": settings.tls_ca_file}
    pool = BoundedIdlePool(
        host=settings.host,
        port=settings.port,
        username=settings.username,
        password=settings.password,
        **tls,
        max_connections=settings.pool_max_active,
        max_idle=settings.pool_max_idle,
        timeout=timeout,  # wait this long for a free connection, then raise
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=decode_responses,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections


async def warm_pool(client: Redis, settings: RedisSettings) -> None:
    """Open ``REDIS_POOL_MIN_IDLE`` connections up front; best-effort (Redis may be down at start)."""
    if settings.pool_min_idle <= 0:
        return
    pool = client.connection_pool
    conns = []
    try:
        for _ in range(settings.pool_min_idle):
            conns.append(await pool.get_connection())
    except Exception as exc:  # noqa: BLE001 - start-up must not fail because Redis is down
        log.warning("redis pool warm-up failed; connections will open on demand", error=str(exc))
    finally:
        await asyncio.gather(*(pool.release(c) for c in conns), return_exceptions=True)
