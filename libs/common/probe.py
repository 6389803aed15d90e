"""Readiness against PostgreSQL on a connection of its own, and the schema gate of each role.

The probe never borrows from the request pool: with ten slow queries holding the pool, a ping that
waits for a pooled connection would fail ``/readyz``, the balancer would move that load to the other
pods, and they would fail in turn (a cascade out of a busy moment). One dedicated connection
answers ``SELECT 1`` in microseconds whatever the pool is doing; it is reopened after a failure.

The schema gate: a role is ready only once every migration it depends on is applied (``atas
migrate``, or ``atas serve --migrate``). The versions come from the migration files this build
ships, by range: V001 is the shared base, V010-V019 ingest's, V020-V029 query's. Query reads the
tables ingest writes, so it waits for ingest's migrations as well as its own.
"""

from __future__ import annotations

import asyncio

import asyncpg

from .migrate import load_migrations

PROBE_TIMEOUT_S = 2.0
# Upper end (exclusive) of the versions each role depends on.
_ROLE_BELOW = {"ingest": 20, "query": 30}


def versions_needed(role: str) -> frozenset[int]:
    """The migration versions ``role`` cannot run without, read from the shipped files."""
    below = _ROLE_BELOW[role]
    return frozenset(m.version for m in load_migrations() if m.version < below)


class PgProbe:
    """A single connection for readiness checks, opened on first use and after any failure."""

    def __init__(self, dsn: str, *, application_name: str):
        self._dsn = dsn
        self._application_name = application_name
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # concurrent probes share the one connection in turn

    async def _fetch(self, query: str, *args):
        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(
                        self._dsn, timeout=PROBE_TIMEOUT_S,
                        server_settings={"application_name": f"{self._application_name}-probe"})
                return await self._conn.fetch(query, *args, timeout=PROBE_TIMEOUT_S)
            except BaseException:
                self._drop()
                raise

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def missing_versions(self, needed: frozenset[int]) -> list[int]:
        """The versions of ``needed`` not recorded as applied (all of them before the first migrate)."""
        try:
            rows = await self._fetch("SELECT version FROM atas_schema_history WHERE version = ANY($1::int[])",
                                     sorted(needed))
        except asyncpg.UndefinedTableError:
            return sorted(needed)
        return sorted(needed - {r["version"] for r in rows})

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                try:
                    await asyncio.wait_for(conn.close(), PROBE_TIMEOUT_S)
                except Exception:  # noqa: BLE001 - the server may be gone
                    conn.terminate()
