"""/readyz covers what a service cannot answer without, on a connection of its own.

A real PostgreSQL: a database migrated only up to ingest's migrations keeps query (which needs
V020) out of the balancer while ingest goes ready; a request pool held entirely by slow requests
does not fail readiness (which would move the load to the next pod, and fail it in turn).
"""

from __future__ import annotations

import secrets

import asyncpg
import pytest

from atas.common.db import create_database, drop_database
from atas.common.engines import ENGINES
from atas.common.migrate import load_migrations, migrate
from atas.common.probe import versions_needed
from tests.conftest import make_settings

from .test_loops import serve

pytestmark = pytest.mark.pg


def test_the_roles_are_gated_on_the_migration_files_they_ship():
    shipped = {m.version for m in load_migrations()}
    assert versions_needed("ingest") == {v for v in shipped if v < 20}
    assert max(versions_needed("query")) == max(v for v in shipped if v < 30) >= 20


@pytest.fixture
async def half_migrated(pg_server_url):
    """A database with every migration but query's (V02x) applied."""
    dsn = await create_database(pg_server_url, f"atas_half_{secrets.token_hex(4)}")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, [m for m in load_migrations() if m.version < 20])
    finally:
        await conn.close()
    yield dsn
    await drop_database(dsn)


async def test_query_is_not_ready_before_its_migrations_and_ingest_is(half_migrated):
    settings = make_settings(db_dsn=half_migrated)
    async with serve("ingest", settings) as ingest, serve("query", settings) as query:
        resp = await ingest.get("/readyz")
        assert resp.status == 200, await resp.text()
        resp = await query.get("/readyz")
        body = await resp.json()
        assert resp.status == 503
        assert body["checks"]["postgres"] == "ok"
        assert "V020" in body["checks"]["query_schema"] and "atas migrate" in body["checks"]["query_schema"]
        conn = await asyncpg.connect(half_migrated)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        resp = await query.get("/readyz")
        assert resp.status == 200, await resp.text()


async def test_readiness_answers_while_slow_requests_hold_the_whole_pool(pg):
    settings = make_settings(db_dsn=pg)
    async with serve("query", settings) as query:
        pool = query.app[ENGINES].pool
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        try:
            resp = await query.get("/readyz")
            assert resp.status == 200, await resp.text()
        finally:
            for conn in held:
                await pool.release(conn)
