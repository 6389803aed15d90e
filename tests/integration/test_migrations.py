import os
import subprocess
import sys

import asyncpg
import pytest

from atas.common.db import create_database, drop_database
from atas.common.migrate import MigrationError, load_migrations, migrate

pytestmark = pytest.mark.pg


@pytest.fixture
async def fresh_db(pg_server_url):
    """fresh_db(name): an empty database on the real server, dropped after the test."""
    made: list[str] = []

    async def _make(name: str) -> str:
        made.append(await create_database(pg_server_url, name, replace=True))
        return made[-1]

    yield _make
    for dsn in made:
        await drop_database(dsn)


async def test_two_processes_migrating_at_once_apply_each_migration_once(fresh_db, pg, tmp_path):
    dsn = await fresh_db("atas_test_concurrent_migrate")
    env = {**os.environ, "DB_URL": dsn}
    procs = [subprocess.Popen([sys.executable, "-m", "atas.cli.main", "migrate"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, count(*) AS n FROM atas_schema_history GROUP BY version")
        assert {r["version"]: r["n"] for r in rows} == {m.version: 1 for m in load_migrations()}
        # the schema exists once, whichever process applied it
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'executions'") == 1
    finally:
        await conn.close()
    applied_counts = sorted(int(err.decode().split("(")[-1].split()[0]) for _, err in outs)
    assert applied_counts == [0, len(load_migrations())]


async def test_changed_applied_migration_stops_start_up(fresh_db, pg, tmp_path):
    dsn = await fresh_db("atas_test_changed_migration")
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "V001__first.sql").write_text("CREATE TABLE t1 (id int);")
    conn = await asyncpg.connect(dsn)
    try:
        assert len(await migrate(conn, load_migrations(folder))) == 1
        (folder / "V001__first.sql").write_text("CREATE TABLE t1 (id bigint);")
        (folder / "V002__second.sql").write_text("CREATE TABLE t2 (id int);")
        with pytest.raises(MigrationError, match="V001__first.sql was changed"):
            await migrate(conn, load_migrations(folder))
        # nothing after the mismatch was applied
        assert await conn.fetchval("SELECT to_regclass('t2')") is None
    finally:
        await conn.close()


async def test_migrate_cli_exits_3_with_a_clear_message_on_a_changed_migration(fresh_db, pg):
    dsn = await fresh_db("atas_test_changed_cli")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute("UPDATE atas_schema_history SET checksum = 'deadbeef' WHERE version = 1")
    finally:
        await conn.close()
    proc = subprocess.run([sys.executable, "-m", "atas.cli.main", "migrate"], env={**os.environ, "DB_URL": dsn},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "V001__init.sql was changed after it was applied" in proc.stderr


async def test_a_second_run_is_a_no_op(pg):
    conn = await asyncpg.connect(pg)
    try:
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_results_are_partitioned_with_months_prepared_ahead(pg):
    conn = await asyncpg.connect(pg)
    try:
        parts = await conn.fetch("SELECT inhrelid::regclass::text AS name FROM pg_inherits "
                                 "WHERE inhparent = 'results'::regclass")
        names = {r["name"] for r in parts}
        assert "results_default" in names and len(names) >= 5
        assert await conn.fetchval("SELECT atas_ensure_result_partitions(1, 3)") == 0  # idempotent
    finally:
        await conn.close()


async def test_partition_upkeep_gives_way_to_a_long_query_instead_of_stalling_inserts(pg):
    """Creating a partition locks `results` exclusively: behind a long query it must give up (and
    retry later) rather than wait, since every insert would queue behind its waiting lock."""
    import time

    from atas.common.config import DatabaseSettings
    from atas.common.db import create_pool
    from atas.ingest.app import ensure_partitions

    reader = await asyncpg.connect(pg)
    pool = await create_pool(DatabaseSettings(dsn=pg, pool_min=0, pool_max=2))
    try:
        tx = reader.transaction()
        await tx.start()
        await reader.fetch("SELECT 1 FROM results LIMIT 1")  # a long report query holding its lock
        started = time.monotonic()
        with pytest.raises(asyncpg.LockNotAvailableError):
            await ensure_partitions(pool, 1, 6)  # months 4..6 ahead are new: a CREATE is needed
        assert time.monotonic() - started < 10
        await tx.rollback()
        assert await ensure_partitions(pool, 1, 6) == 3  # the next round, the query gone, creates them
    finally:
        await pool.close()
        await reader.close()
