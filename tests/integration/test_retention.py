"""`atas retention` on a real PostgreSQL, with data written through ingest and backdated across
several monthly partitions of `results`, the default partition and the month the horizon falls in."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.bus import MemoryBus
from atas.common.engines import install_engines
from atas.common.retention import Retention
from atas.common.retention_plan import cutoff_for
from atas.ingest.app import setup as setup_ingest
from atas.ingest.config import IngestConfig
from atas.query.rollups import settle
from tests.conftest import make_settings

pytestmark = pytest.mark.pg


def _months_before(d: date, months: int) -> date:
    y, m = divmod(d.year * 12 + d.month - 1 - months, 12)
    return date(y, m + 1, min(d.day, 28))


@pytest.fixture
def horizon() -> tuple[int, datetime]:
    """RETENTION_DAYS that puts the cutoff on the 15th, four months back: a month cut in two, with
    whole months before it (partitions to drop) and whole months after it."""
    today = datetime.now(UTC).date()
    cut = _months_before(today, 4).replace(day=15)
    days = (today - cut).days
    return days, cutoff_for(days)


@pytest.fixture
async def ingest(pg):
    app = create_app(make_settings(db_dsn=pg), "ingest")
    install_engines(app, application_name="atas-retention-test", bus=MemoryBus())
    setup_ingest(app, IngestConfig(relay_poll_s=0.2))
    client = TestClient(TestServer(app))
    await client.start_server()
    conn = await asyncpg.connect(pg)
    # Monthly partitions back to eight months, as a long-running ingest would have left them.
    await conn.execute("SELECT atas_ensure_result_partitions(8, 1)")
    await conn.close()
    yield client
    await client.close()


async def record(client, headers, started_at: datetime, *, project="demo", tests=6, env="ci", branch="main") -> str:
    """One execution started at ``started_at``: ``tests`` tests, the first failing once then passing."""
    eid = str(uuid.uuid4())
    resp = await client.post("/v1/executions", headers=headers, json={
        "id": eid, "project": project, "name": "nightly", "environment": env, "branch": branch,
        "started_at": started_at.isoformat()})
    assert resp.status in (200, 201), await resp.text()
    batch = [{"test_id": f"t{i}", "name": f"test {i}", "status": "passed", "duration_ms": 5 + i}
             for i in range(tests)]
    batch[0] = {**batch[0], "status": "failed", "error_type": "AssertionError"}
    batch.append({"test_id": "t0", "name": "test 0", "status": "passed", "attempt": 2, "duration_ms": 3})
    resp = await client.post(f"/v1/executions/{eid}/results", headers=headers, json={"results": batch})
    assert resp.status == 200, await resp.text()
    return eid


async def backdated_data(client, headers, cutoff: datetime) -> tuple[set[str], set[str]]:
    """(executions past the horizon, executions kept), across partitions, the default one and the
    month of the cutoff, with the boundary on both sides."""
    old = {
        await record(client, headers, cutoff - timedelta(days=420)),  # no partition: results_default
        await record(client, headers, cutoff - timedelta(days=75), project="other", env="prod"),
        await record(client, headers, cutoff - timedelta(days=45), branch="feature"),
        await record(client, headers, cutoff - timedelta(days=12)),  # the cut month, before the 15th
        await record(client, headers, cutoff - timedelta(hours=1)),  # the last hour past the horizon
    }
    kept = {
        await record(client, headers, cutoff),  # the first instant kept
        await record(client, headers, cutoff + timedelta(days=5), project="other"),
        await record(client, headers, datetime.now(UTC) - timedelta(hours=2)),
    }
    return old, kept


async def snapshot(conn) -> dict:
    rollup = "SELECT project, day, environment, test_id, runs, passed, failed FROM {} ORDER BY 1, 2, 3, 4"
    return {
        "executions": {str(r["id"]) for r in await conn.fetch("SELECT id FROM executions")},
        "results": await conn.fetchval("SELECT count(*) FROM results"),
        "result_executions": {str(r[0]) for r in await conn.fetch("SELECT DISTINCT execution_id FROM results")},
        "partitions": {r[0] for r in await conn.fetch(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'results'::regclass")},
        "daily": [tuple(r) for r in await conn.fetch(rollup.format("query_test_daily"))],
        "branch": [tuple(r) for r in await conn.fetch(rollup.format("query_test_daily_branch"))],
        "outbox_dead": await conn.fetchval("SELECT count(*) FROM outbox_dead"),
    }


async def add_dead_events(conn) -> None:
    for i, age in enumerate((31, 29)):
        await conn.execute(
            "INSERT INTO outbox_dead (id, event_id, event_key, payload, created_at, dead_at, reason) "
            "VALUES ($1, gen_random_uuid(), '\\x00', '\\x00', now() - make_interval(days => $2), "
            "now() - make_interval(days => $2), 'too large')", 1000 + i, age)


def atas(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atas.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120)


async def test_dry_run_counts_and_a_real_run_removes_exactly_what_is_past_the_horizon(
        pg, ingest, token, horizon, pg_pool):
    days, cutoff = horizon
    h = {"Authorization": f"Bearer {token(projects=('demo', 'other'))}"}
    old, kept = await backdated_data(ingest, h, cutoff)
    await settle(pg_pool)
    conn = await asyncpg.connect(pg)
    try:
        await add_dead_events(conn)
        before = await snapshot(conn)
        past_days = [r for r in before["daily"] if r[1] < cutoff.date()]
        past_branch = [r for r in before["branch"] if r[1] < cutoff.date()]
        whole_months = {r[0] for r in await conn.fetch(
            "SELECT inhrelid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE inhparent = 'results'::regclass AND relname ~ '^results_[0-9]{4}_[0-9]{2}$' "
            "AND to_date(substr(relname, 9), 'YYYY_MM') + interval '1 month' <= $1::date",
            cutoff.date())}
        assert len(whole_months) >= 3 and past_days and past_branch

        env = {**os.environ, "DB_URL": pg, "RETENTION_DAYS": str(days)}
        dry = atas("retention", "--dry-run", "--json", env=env)
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["dry_run"] and plan["cutoff"] == cutoff.isoformat().replace("+00:00", "Z")
        assert plan["removed"]["executions"]["rows"] == len(old) == 5
        assert plan["removed"]["results"]["rows"] == 5 * 7
        assert plan["removed"]["query_test_daily"]["rows"] == len(past_days)
        assert plan["removed"]["query_test_daily_branch"]["rows"] == len(past_branch)
        assert plan["removed"]["outbox_dead"]["rows"] == 1
        assert set(plan["partitions_dropped"]) == whole_months
        assert "would drop partition" in dry.stderr
        assert await snapshot(conn) == before, "a dry run removed something"

        real = atas("retention", env=env)
        assert real.returncode == 0, real.stderr
        assert "removed everything started before" in real.stdout and "results" in real.stdout
        after = await snapshot(conn)
        assert after["executions"] == kept
        assert after["result_executions"] == kept and after["results"] == 3 * 7
        assert after["partitions"] == before["partitions"] - whole_months
        assert after["outbox_dead"] == 1

        # The rollup worker finds no leftover deltas of removed days, and what it keeps equals a
        # recount of the results that are left.
        await settle(pg_pool)
        after = await snapshot(conn)
        assert [r for r in after["daily"] if r[1] < cutoff.date()] == []
        assert [r for r in after["branch"] if r[1] < cutoff.date()] == []
        assert after["daily"] == [r for r in before["daily"] if r[1] >= cutoff.date()]
        assert after["branch"] == [r for r in before["branch"] if r[1] >= cutoff.date()]

        again = atas("retention", "--json", env=env)
        assert json.loads(again.stdout)["removed"]["results"]["rows"] == 0, "a second run found more"
    finally:
        await conn.close()


async def test_ingest_keeps_writing_during_a_run(pg, ingest, token, horizon, pg_pool):
    days, cutoff = horizon
    h = {"Authorization": f"Bearer {token()}"}
    old = [await record(ingest, h, cutoff - timedelta(days=d), tests=150) for d in range(2, 160, 4)]
    live = await record(ingest, h, datetime.now(UTC))
    latencies: list[float] = []
    stop = asyncio.Event()

    async def write() -> int:
        sent = 0
        while not stop.is_set():
            batch = [{"test_id": f"live{sent + i}", "name": "live", "status": "passed"} for i in range(50)]
            t0 = time.monotonic()
            resp = await ingest.post(f"/v1/executions/{live}/results", headers=h, json={"results": batch})
            latencies.append(time.monotonic() - t0)
            assert resp.status == 200, await resp.text()
            sent += len(batch)
        return sent

    writer = asyncio.create_task(write())
    conn = await asyncpg.connect(pg)
    try:
        report = await Retention(conn, days=days, batch=300, lock_timeout_ms=1000).run()
    finally:
        await conn.close()
        stop.set()
    sent = await writer
    assert report.deferred == [] and report.removed["executions"].rows == len(old)
    async with pg_pool.acquire() as c:
        assert await c.fetchval("SELECT count(*) FROM results WHERE execution_id = $1", uuid.UUID(live)) == sent + 7
        assert await c.fetchval("SELECT count(*) FROM executions WHERE started_at < $1", cutoff) == 0
    assert len(latencies) > 5, "the run was too short to overlap ingest"
    # Bounded by lock_timeout (1 s) plus the batch itself, with room for a busy 2-core machine.
    assert max(latencies) < 3.0, sorted(latencies)[-5:]


async def test_a_partition_it_cannot_lock_is_left_whole_for_the_next_run(pg, ingest, token, horizon):
    days, cutoff = horizon
    h = {"Authorization": f"Bearer {token()}"}
    in_old_month = await record(ingest, h, cutoff - timedelta(days=45))
    live = await record(ingest, h, datetime.now(UTC))
    holder = await asyncpg.connect(pg)
    conn = await asyncpg.connect(pg)
    latencies: list[float] = []
    stop = asyncio.Event()

    async def write() -> None:
        n = 0
        while not stop.is_set():
            t0 = time.monotonic()
            resp = await ingest.post(f"/v1/executions/{live}/results", headers=h, json={"results": [
                {"test_id": f"live{n}", "name": "live", "status": "passed"}]})
            latencies.append(time.monotonic() - t0)
            assert resp.status == 200, await resp.text()
            n += 1

    try:
        # A long reader of `results` (a report, a backup): the drop cannot get its lock, and while
        # it waits for it every insert into `results` queues behind it, for lock_timeout at most.
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE results IN ACCESS SHARE MODE")
        writer = asyncio.create_task(write())
        report = await Retention(conn, days=days, lock_timeout_ms=200, retries=1).run()
        stop.set()
        await writer
        await tx.rollback()
        assert len(latencies) >= 3 and max(latencies) < 1.5, sorted(latencies)[-5:]
        month = (cutoff - timedelta(days=45)).strftime("results_%Y_%m")
        assert f"drop {month}" in report.deferred
        # Its execution and results stay together: no row-by-row DELETE of a month that should go whole.
        assert await conn.fetchval("SELECT count(*) FROM executions WHERE id = $1", uuid.UUID(in_old_month)) == 1
        assert await conn.fetchval(f"SELECT count(*) FROM {month}") == 7
        report = await Retention(conn, days=days, lock_timeout_ms=200, retries=1).run()
        assert report.deferred == [] and month in report.partitions_dropped
        assert await conn.fetchval("SELECT count(*) FROM executions WHERE id = $1", uuid.UUID(in_old_month)) == 0
    finally:
        await holder.close()
        await conn.close()


async def test_the_daily_task_of_atas_dev_removes_old_data_and_counts_it_on_metrics(pg, ingest, token, horizon):
    from atas.common.retention_task import daily_retention

    days, cutoff = horizon
    h = {"Authorization": f"Bearer {token()}"}
    old = uuid.UUID(await record(ingest, h, cutoff - timedelta(days=3)))
    app = create_app(make_settings(db_dsn=pg, mode="dev"), "dev")
    app.cleanup_ctx.append(daily_retention(pg, days, first_run_s=0, interval_s=3600))
    client = TestClient(TestServer(app))
    await client.start_server()
    conn = await asyncpg.connect(pg)
    try:
        async with asyncio.timeout(30):
            while await conn.fetchval("SELECT count(*) FROM executions WHERE id = $1", old):
                await asyncio.sleep(0.1)
            while True:  # the run commits, then counts
                text = await (await client.get("/metrics")).text()
                if "atas_retention_last_success_timestamp_seconds" in text and \
                        'atas_retention_rows_removed_total{table="executions"}' in text:
                    break
                await asyncio.sleep(0.1)
        assert await conn.fetchval("SELECT count(*) FROM results WHERE execution_id = $1", old) == 0
        line = next(x for x in text.splitlines() if x.startswith('atas_retention_rows_removed_total{table="results"}'))
        assert float(line.split()[-1]) >= 7
    finally:
        await conn.close()
        await client.close()


async def test_an_execution_bigger_than_a_batch_goes_with_all_its_results_a_batch_at_a_time(
        pg, ingest, token, horizon):
    days, cutoff = horizon
    h = {"Authorization": f"Bearer {token()}"}
    big = uuid.UUID(await record(ingest, h, cutoff - timedelta(days=2), tests=40))  # the cut month
    small = uuid.UUID(await record(ingest, h, cutoff - timedelta(days=1), tests=3))
    kept = uuid.UUID(await record(ingest, h, cutoff + timedelta(hours=1), tests=40))
    conn = await asyncpg.connect(pg)
    try:
        report = await Retention(conn, days=days, batch=10).run()
        assert report.removed["results"].rows == 41 + 4 and report.removed["executions"].rows == 2
        left = {r[0]: r[1] for r in await conn.fetch(
            "SELECT execution_id, count(*) FROM results GROUP BY execution_id")}
        assert left == {kept: 41}
        assert {r[0] for r in await conn.fetch("SELECT id FROM executions")} == {kept}
        assert big not in left and small not in left
    finally:
        await conn.close()


async def test_attachment_objects_of_removed_executions_are_one_step_skipped_without_the_table(
        pg, ingest, token, horizon):
    days, cutoff = horizon
    h = {"Authorization": f"Bearer {token()}"}
    old = {uuid.UUID(await record(ingest, h, cutoff - timedelta(days=d))) for d in (2, 3)}
    await record(ingest, h, cutoff + timedelta(days=1))
    asked: list[tuple[str, uuid.UUID]] = []

    async def remove(pairs):
        asked.extend(pairs)
        return len(pairs), 100 * len(pairs)

    conn = await asyncpg.connect(pg)
    stand_in = not await conn.fetchval("SELECT to_regclass('attachments') IS NOT NULL")
    try:
        if stand_in:  # no attachments table in this build: the step does nothing
            report = await Retention(conn, days=days, dry_run=True, objects=remove).run()
            assert asked == [] and report.notes == []
            # What V016 will create, as far as this step cares: that the table exists.
            await conn.execute("CREATE TABLE attachments (id uuid PRIMARY KEY)")
        report = await Retention(conn, days=days, objects=remove).run()
        assert sorted(asked) == sorted(("demo", eid) for eid in old)
        assert report.removed["attachment_objects"].rows == 2 and report.removed["attachment_objects"].bytes == 200
        assert report.removed["executions"].rows == 2
    finally:
        if stand_in:
            await conn.execute("DROP TABLE IF EXISTS attachments")
        await conn.close()
