"""The rollup queue: exact under transactions that commit late, and no row locks shared by ingests."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from atas.query.rollups import drain, settle
from tests.integration.query.conftest import RESULT_COLUMNS, Dataset

pytestmark = pytest.mark.pg

EXECUTION_SQL = """INSERT INTO executions (id, project, name, environment, branch, started_at)
                   VALUES ($1, 'demo', 'run', 'ci', 'main', $2)"""


async def _insert(conn, execution_id, started, statuses):
    await conn.execute(EXECUTION_SQL, execution_id, started)
    await conn.copy_records_to_table("results", columns=RESULT_COLUMNS, records=[
        (started, execution_id, "demo", f"t{i}", 1, uuid.uuid4(), f"t{i}", "s", status, 10)
        for i, status in enumerate(statuses)])


async def _rollup(pool):
    rows = await pool.fetch("SELECT test_id, runs, failed FROM query_test_daily WHERE project = 'demo' ORDER BY 1")
    by_branch = await pool.fetch("SELECT test_id, runs, failed FROM query_test_daily_branch "
                                 "WHERE project = 'demo' ORDER BY 1")
    assert [tuple(r) for r in rows] == [tuple(r) for r in by_branch]
    return {r["test_id"]: (r["runs"], r["failed"]) for r in rows}


async def test_results_committed_after_a_worker_round_are_still_counted(pg_pool, dataset: Dataset):
    started = datetime.now(timezone.utc) - timedelta(hours=1)
    async with pg_pool.acquire() as slow:
        tx = slow.transaction()
        await tx.start()
        await _insert(slow, uuid.uuid4(), started, ["failed", "passed"])
        async with pg_pool.acquire() as fast:
            await _insert(fast, uuid.uuid4(), started, ["passed", "passed"])  # commits at once
        await drain(pg_pool)  # a round while the slow transaction is in flight
        assert await _rollup(pg_pool) == {"t0": (1, 0), "t1": (1, 0)}
        await tx.commit()
    await settle(pg_pool)
    assert await _rollup(pg_pool) == {"t0": (2, 1), "t1": (2, 0)}


async def test_concurrent_ingest_transactions_do_not_wait_on_each_other(pg_pool, dataset: Dataset):
    started = datetime.now(timezone.utc) - timedelta(hours=1)
    async with pg_pool.acquire() as first, pg_pool.acquire() as second:
        await second.execute("SET lock_timeout = '10s'")  # a lock wait would fail here, not hang
        tx1, tx2 = first.transaction(), second.transaction()
        await tx1.start()
        await tx2.start()
        # Same project, day, environment, branch and tests: the same rollup rows.
        await _insert(first, uuid.uuid4(), started, ["failed"] * 5)
        await _insert(second, uuid.uuid4(), started, ["passed"] * 5)
        await tx2.commit()
        await tx1.commit()
        await second.execute("RESET lock_timeout")
    await settle(pg_pool)
    assert await _rollup(pg_pool) == {f"t{i}": (2, 1) for i in range(5)}


async def test_a_long_backlog_tells_the_cache_after_every_round_not_only_at_its_end(pg_pool, dataset: Dataset):
    """Cached per-test answers are dropped when rollup rounds commit; during a backlog of many
    rounds they must not stay on answers computed before its first rounds until it is all done."""
    import asyncio

    from atas.query.rollups import RollupWorker

    started = datetime.now(timezone.utc) - timedelta(hours=1)
    for _ in range(4):  # four queued executions: four rounds of one
        async with pg_pool.acquire() as conn:
            await _insert(conn, uuid.uuid4(), started, ["failed", "passed"])
    told: list[frozenset[str]] = []

    async def on_applied(projects):
        told.append(frozenset(projects))

    worker = RollupWorker(pg_pool, interval_s=3600, batch=1, on_applied=on_applied)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(30):
            while await pg_pool.fetchval("SELECT count(*) FROM query_rollup_queue"):
                await asyncio.sleep(0.05)
            while not told:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert len(told) >= 3 and set(told) == {frozenset({"demo"})}
    assert await _rollup(pg_pool) == {"t0": (4, 4), "t1": (4, 0)}
