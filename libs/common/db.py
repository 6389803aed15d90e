"""asyncpg pool factory and the errors that mean "PostgreSQL is unavailable" (→ 503)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec

from .config import DatabaseSettings

_json_encoder = msgspec.json.Encoder()

# Errors that say the database cannot be reached right now, as opposed to a bug or bad input.
# Handlers let these propagate; the error middleware answers 503 with Retry-After.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.ConnectionFailureError,
    asyncpg.TooManyConnectionsError,
    asyncpg.OperatorInterventionError,
    asyncpg.exceptions.PostgresConnectionError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, schema="pg_catalog", format="text",
            encoder=lambda v: _json_encoder.encode(v).decode(), decoder=msgspec.json.decode,
        )


async def create_pool(settings: DatabaseSettings, *, application_name: str = "atas",
                      min_size: int | None = None, max_size: int | None = None) -> asyncpg.Pool:
    """A pool that starts without connecting (min_size 0 by default when the DB may be down), with
    msgspec-backed JSON codecs and a statement timeout so a runaway query cannot hold a connection."""
    server_settings = {"application_name": application_name}
    if settings.statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.statement_timeout_ms)
    return await asyncpg.create_pool(
        dsn=settings.dsn,
        min_size=settings.pool_min if min_size is None else min_size,
        max_size=settings.pool_max if max_size is None else max_size,
        init=_init_connection,
        server_settings=server_settings,
        command_timeout=max(settings.statement_timeout_ms / 1000 + 5, 10) if settings.statement_timeout_ms else None,
        # Recycle idle connections so a PostgreSQL failover does not leave dead sockets in the pool.
        max_inactive_connection_lifetime=60.0,
        timeout=5.0,
    )


async def warm_pool(pool: asyncpg.Pool, count: int, *, timeout_s: float = 5.0) -> int:
    """Open ``count`` connections now (``DB_POOL_MIN``), so the first requests do not pay for them.

    Best-effort: the pool is created empty so that a service starts while PostgreSQL is down, and
    a failure here only means connections open on demand. Returns how many were opened. Like any
    idle connection they are closed after 60 s without use (asyncpg cannot keep a floor in a pool
    created empty: its ``init_size`` must be at least ``min_size``).
    """
    if count <= 0:
        return 0
    tasks = [asyncio.ensure_future(pool.acquire()) for _ in range(count)]
    try:
        await asyncio.wait(tasks, timeout=timeout_s)
    finally:
        # Also when start-up itself is cancelled (SIGTERM while PostgreSQL is slow): stop what is
        # still connecting, then give back every connection acquired, including one that won a
        # race with its cancel, so none stays checked out of the pool.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        opened = [t.result() for t in tasks if not t.cancelled() and t.exception() is None]
        await asyncio.gather(*(pool.release(c) for c in opened), return_exceptions=True)
    return len(opened)


async def connect(dsn: str, *, application_name: str = "atas") -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": application_name}, timeout=10)
    await _init_connection(conn)
    return conn


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")


def database_dsn(dsn: str, name: str) -> str:
    """``dsn`` with its database replaced by ``name`` (same server, credentials and options)."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


async def create_database(server_dsn: str, name: str, *, replace: bool = False, migrate: bool = False) -> str:
    """Create database ``name`` on the server of ``server_dsn`` and return its DSN.

    ``replace`` drops an existing one first; ``migrate`` applies the migrations. For tests, benches
    and tools that want a database of their own on a shared server.
    """
    admin = await connect(server_dsn, application_name="atas-admin")
    try:
        if replace:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = database_dsn(server_dsn, name)
    if migrate:
        from .migrate import migrate_dsn

        await migrate_dsn(dsn)
    return dsn


async def drop_database(dsn: str) -> None:
    """Drop the database ``dsn`` names (connections to it are terminated)."""
    name = urlsplit(dsn).path.lstrip("/")
    admin = await connect(database_dsn(dsn, "postgres"), application_name="atas-admin")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
