"""Versioned SQL migrations, applied at start under an advisory lock (the Flyway habit).

Files live in ``atas/common/migrations`` as ``V<version>__<description>.sql``. Each is applied once,
in version order, inside its own transaction, and recorded in ``atas_schema_history`` with a SHA-256
checksum. Several processes may migrate at once: a session-level advisory lock makes them take
turns, and the second finds nothing left to do. An applied file whose checksum changed stops
start-up: editing history silently is how schemas drift between environments.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from .logging import get_logger

log = get_logger(__name__)

# An arbitrary, fixed 64-bit key: every ATAS process agrees on it, nothing else uses it.
MIGRATION_LOCK_KEY = 0x4154_4153_4D49_4752  # "ATASMIGR"
_FILE_RE = re.compile(r"^V(\d+)__([A-Za-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The database's schema history disagrees with the migration files shipped in this build."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    filename: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    if directory is None:
        files = [(p.name, p.read_text()) for p in resources.files("atas.common").joinpath("migrations").iterdir()
                 if p.name.endswith(".sql")]
    else:
        files = [(p.name, p.read_text()) for p in Path(directory).glob("*.sql")]
    migrations: list[Migration] = []
    seen: dict[int, str] = {}
    for name, sql in files:
        match = _FILE_RE.match(name)
        if not match:
            raise MigrationError(f"migration file {name!r} is not named V<version>__<description>.sql")
        version = int(match.group(1))
        if version in seen:
            raise MigrationError(f"migrations {seen[version]!r} and {name!r} share version {version}")
        seen[version] = name
        migrations.append(Migration(version, match.group(2).replace("_", " "), name, sql))
    return sorted(migrations, key=lambda m: m.version)


_HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS atas_schema_history (
    version      integer PRIMARY KEY,
    description  text        NOT NULL,
    filename     text        NOT NULL,
    checksum     text        NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    execution_ms integer     NOT NULL
)
"""


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply pending migrations; return the ones this call applied. Raises :class:`MigrationError`."""
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_HISTORY_DDL)
        rows = await conn.fetch("SELECT version, filename, checksum FROM atas_schema_history")
        applied = {r["version"]: r for r in rows}
        for m in migrations:
            row = applied.get(m.version)
            if row is not None and row["checksum"] != m.checksum:
                raise MigrationError(
                    f"migration {m.filename} was changed after it was applied to this database "
                    f"(recorded checksum {row['checksum'][:12]}…, file has {m.checksum[:12]}…). "
                    "Restore the original file and put the change in a new migration."
                )
        known = {m.version for m in migrations}
        unknown = sorted(v for v in applied if v not in known)
        if unknown:
            # A newer build migrated this database (e.g. mid rolling deploy); older code keeps running.
            log.warning("database has migrations this build does not know", versions=unknown)
        done: list[Migration] = []
        for m in migrations:
            if m.version in applied:
                continue
            started = time.perf_counter()
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO atas_schema_history (version, description, filename, checksum, execution_ms)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    m.version, m.description, m.filename, m.checksum,
                    int((time.perf_counter() - started) * 1000),
                )
            log.info("migration applied", version=m.version, file=m.filename,
                     ms=round((time.perf_counter() - started) * 1000, 1))
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def migrate_dsn(dsn: str) -> list[Migration]:
    from .db import connect

    conn = await connect(dsn, application_name="atas-migrate")
    try:
        return await migrate(conn)
    finally:
        await conn.close()
