"""DB_POOL_MIN: the pool starts empty (services start while PostgreSQL is down) and is then warmed."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest

from atas.common.config import DatabaseSettings
from atas.common.db import create_pool, warm_pool

pytestmark = pytest.mark.pg


async def test_warm_up_opens_pool_min_connections_that_requests_then_reuse(pg):
    name = f"atas-warm-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(DatabaseSettings(dsn=pg, pool_min=3, pool_max=10), application_name=name,
                             min_size=0)
    try:
        assert pool.get_size() == 0  # nothing opened by creating it
        assert await warm_pool(pool, 3) == 3
        assert pool.get_idle_size() == 3
        async with pool.acquire() as conn:
            sessions = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name)
        assert sessions == 3  # the warmed connections served the query: none was opened for it
    finally:
        await pool.close()


async def test_warm_up_with_postgres_unreachable_gives_up_quietly():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = await create_pool(DatabaseSettings(dsn=f"postgresql://atas@127.0.0.1:{port}/atas", pool_min=2, pool_max=4),
                             min_size=0)
    try:
        started = time.monotonic()
        assert await warm_pool(pool, 2, timeout_s=2.0) == 0
        assert time.monotonic() - started < 3
        assert pool.get_size() == 0 or pool.get_idle_size() == pool.get_size()  # nothing left acquired
    finally:
        await pool.close()


async def test_a_cancelled_warm_up_leaves_no_connection_checked_out(pg):
    """SIGTERM during start-up: the warm-up is cancelled mid-way and must give back what it holds."""
    pool = await create_pool(DatabaseSettings(dsn=pg, pool_min=4, pool_max=4), min_size=0)
    try:
        task = asyncio.create_task(warm_pool(pool, 4, timeout_s=10))
        async with asyncio.timeout(10):
            while pool.get_size() < 1:  # some connections are open or opening
                await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Every one of the 4 slots can be acquired at once: nothing was left checked out.
        async with asyncio.timeout(5):
            conns = [await pool.acquire() for _ in range(4)]
        for c in conns:
            await pool.release(c)
    finally:
        async with asyncio.timeout(10):
            await pool.close()


async def test_a_statement_timeout_is_a_504_that_says_to_narrow_the_request_not_a_retryable_503(pg):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from atas.common.app import create_app
    from atas.common.config import Settings

    pool = await create_pool(DatabaseSettings(dsn=pg, pool_min=0, pool_max=2, statement_timeout_ms=200))

    async def heavy(request: web.Request) -> web.Response:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_sleep(2)")
        return web.json_response({})

    app = create_app(Settings(db=None, redis=None, kafka=None, jwt_secret="x" * 32), "test")
    app.router.add_get("/heavy", heavy)
    try:
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/heavy")
            body = await resp.json()
        assert resp.status == 504 and "Retry-After" not in resp.headers
        assert body["error"]["code"] == "statement_timeout" and "narrow" in body["error"]["message"]
    finally:
        await pool.close()
