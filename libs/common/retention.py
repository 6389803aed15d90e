"""Retention: remove what is older than ``RETENTION_DAYS`` without getting in ingest's way.

What goes, for a horizon of N days (``cutoff`` = today's UTC midnight minus N days):

* ``results`` partitions whose whole month lies before the cutoff are dropped, never emptied by a
  mass DELETE (``results`` is partitioned by month of ``execution_started_at``, V001);
* executions started before the cutoff, each with all of its results, in bounded batches (rows of
  the month the cutoff falls in, and of the default partition, are deleted, not dropped);
* per-test rollup days before the cutoff (``query_test_daily``/``_branch``, V020) and the queued
  deltas of those days;
* ``outbox_dead`` rows dead for more than 30 days;
* the stored attachment objects of removed executions (:func:`remove_attachment_objects`).

The cutoff is a UTC midnight on purpose: a rollup row is one UTC day, so every result removed
belongs to a rollup day removed whole, and the rollups stay equal to a recount of what is left.
The negative deltas the results' DELETE trigger queues (V020) all fall on removed days too; they
are cleared with those days.

Locks. Every statement runs with ``lock_timeout``: a lock that cannot be had within it fails the
step, which is retried a few times with backoff and otherwise left to the next run, so ingest
never queues behind retention for longer than that. Dropping a partition takes an ACCESS
EXCLUSIVE lock on ``results`` (and its default partition) for the few milliseconds of the catalog
change. ``DETACH PARTITION … CONCURRENTLY`` would avoid that, but PostgreSQL refuses it on a table
with a default partition, and ``results`` has one (``results_default``, V001) — hence short locks
under ``lock_timeout``, with retries. Deletes lock executions ``FOR UPDATE SKIP LOCKED``: an
execution a writer holds is left for the next run rather than waited for; a writer that comes
after a deletion finds no execution (404), never an execution without its results.

The query service's cache needs nothing: every cached answer has a TTL, so removed data is gone
from dashboards within ``CACHE_TTL_*`` at most.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta

import asyncpg

from atas.common.logging import get_logger

from .storage import StorageUnavailable
from .retention_plan import (
    OUTBOX_DEAD_DAYS, Partition, Progress, Report, cutoff_for, result_partitions, split_partitions,
)

log = get_logger(__name__)

# A batch of executions to remove, oldest first, through the (project, started_at) index. Rows a
# writer holds are skipped (they stay for the next run) instead of making ingest or us wait; so are
# the months of partitions whose drop was deferred (deleting their results row by row would be the
# mass DELETE the drop avoids).
_PICK_EXECUTIONS = """
SELECT id, started_at, total FROM executions
WHERE project = $1 AND started_at < $2 AND NOT started_at <@ ANY($4::tstzrange[])
ORDER BY started_at, id LIMIT $3
FOR UPDATE SKIP LOCKED
"""
# Every result of those executions, by the primary key's prefix, in whichever partition holds it.
_DELETE_RESULTS_OF = """
WITH gone AS (
    DELETE FROM results r
    USING unnest($1::timestamptz[], $2::uuid[]) AS b(started_at, id)
    WHERE r.execution_started_at = b.started_at AND r.execution_id = b.id
    RETURNING pg_column_size(r.*) AS size
)
SELECT count(*) AS n, coalesce(sum(size), 0) AS size FROM gone
"""
_DELETE_EXECUTIONS = """
WITH gone AS (DELETE FROM executions e WHERE id = ANY($1::uuid[]) RETURNING pg_column_size(e.*) AS size)
SELECT count(*) AS n, coalesce(sum(size), 0) AS size FROM gone
"""
# Results whose execution no longer exists: those of an execution bigger than a batch, removed
# just before, a batch at a time (and any the writer never should have left). Those of an
# execution still there (one a writer held, so it was skipped) stay with it.
_DELETE_ORPHAN_RESULTS = """
WITH gone AS (
    DELETE FROM results r
    WHERE (r.execution_started_at, r.execution_id, r.test_id, r.attempt) IN (
        SELECT execution_started_at, execution_id, test_id, attempt FROM {part} o
        WHERE execution_started_at < $1
          AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = o.execution_id)
        LIMIT $2)
    RETURNING pg_column_size(r.*) AS size
)
SELECT count(*) AS n, coalesce(sum(size), 0) AS size FROM gone
"""
# Rollup rows by the primary key's (project, ...) prefix, a bounded batch at a time.
_DELETE_ROLLUP_DAYS = """
WITH gone AS (
    DELETE FROM {table} t WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {table} WHERE project = $1 AND day < $2 LIMIT $3))
    RETURNING pg_column_size(t.*) AS size
)
SELECT count(*) AS n, coalesce(sum(size), 0) AS size FROM gone
"""
_DELETE_OUTBOX_DEAD = """
WITH gone AS (
    DELETE FROM outbox_dead d WHERE id = ANY(ARRAY(
        SELECT id FROM outbox_dead WHERE dead_at < $1 ORDER BY id LIMIT $2))
    RETURNING pg_column_size(d.*) AS size
)
SELECT count(*) AS n, coalesce(sum(size), 0) AS size FROM gone
"""


# Deletes every stored object under "<project>/<execution>/" for each pair; returns (objects, bytes).
ObjectRemover = Callable[[list[tuple[str, uuid.UUID]]], Awaitable[tuple[int, int]]]


class Retention:
    """One retention run over one connection. ``await Retention(...).run()`` → :class:`Report`.

    ``batch`` bounds the rows one transaction deletes (results of the executions of a batch, by
    their exact counters; rollup and outbox rows); ``lock_timeout_ms`` bounds how long any lock is
    waited for, so how long ingest can queue behind one; a step that times out is retried
    ``retries`` times with backoff, then deferred to the next run. ``objects`` deletes the stored
    attachment objects of removed executions (:meth:`remove_attachment_objects`).
    """

    def __init__(self, conn: asyncpg.Connection, *, days: int, dry_run: bool = False, batch: int = 5000,
                 lock_timeout_ms: int = 2000, retries: int = 5, now: datetime | None = None,
                 progress: Progress | None = None, objects: ObjectRemover | None = None,
                 storage_known: bool = False):
        self.conn = conn
        self.objects = objects
        # A dry run opens no store but counts the objects a real run with one would delete.
        self.storage_known = storage_known or objects is not None
        self.batch = batch
        self.lock_timeout_ms = lock_timeout_ms
        self.retries = retries
        self.cutoff = cutoff_for(days, now)
        self.cutoff_day: date = self.cutoff.date()
        self.outbox_cutoff = (now or datetime.now(UTC)) - timedelta(days=OUTBOX_DEAD_DAYS)
        self.report = Report(days=days, cutoff=self.cutoff, dry_run=dry_run)
        self.progress = progress or (lambda _msg: None)
        self._has_attachments: bool | None = None
        # [lo, hi) of partitions past the horizon that could not be dropped this run.
        self._kept_months: list[asyncpg.Range] = []

    async def run(self) -> Report:
        started = time.monotonic()
        await self.conn.execute(f"SET lock_timeout = {int(self.lock_timeout_ms)}")
        projects = [r["key"] for r in await self.conn.fetch("SELECT key FROM projects ORDER BY key")]
        whole, partial = split_partitions(await result_partitions(self.conn), self.cutoff)
        if self.report.dry_run:
            await self._plan(projects, whole, partial)
        else:
            # Partitions first: their results vanish without a DELETE, and the executions' batches
            # that follow then find nothing there to delete row by row.
            for part in whole:
                await self._drop_partition(part)
            for project in projects:
                await self._remove_executions(project)
            for part in partial:
                await self._remove_orphan_results(part)
            await self._remove_rollup_days(projects)
            await self._remove_outbox_dead()
        self.report.seconds = time.monotonic() - started
        return self.report

    # ------------------------------------------------------------------ dry run

    async def _plan(self, projects: list[str], whole: list[Partition], partial: list[Partition]) -> None:
        c, r = self.conn, self.report
        for part in whole:
            n = await c.fetchval(f"SELECT count(*) FROM {part.name}")
            size = await c.fetchval("SELECT pg_total_relation_size($1::regclass)", part.name)
            r.removed["results"].add(n, size)
            r.partitions_dropped.append(part.name)
            self.progress(f"would drop partition {part.name}: {n} results, {size} bytes")
        for part in partial:
            row = await c.fetchrow(f"SELECT count(*) AS n, coalesce(sum(pg_column_size(t.*)), 0) AS size "
                                   f"FROM {part.name} t WHERE execution_started_at < $1", self.cutoff)
            r.removed["results"].add(row["n"], row["size"])
            self.progress(f"would delete {row['n']} results from {part.name}")
        queries = {
            "executions": ("SELECT count(*) AS n, coalesce(sum(pg_column_size(t.*)), 0) AS size "
                           "FROM executions t WHERE started_at < $1", self.cutoff),
            "query_test_daily": ("SELECT count(*) AS n, coalesce(sum(pg_column_size(t.*)), 0) AS size "
                                 "FROM query_test_daily t WHERE day < $1", self.cutoff_day),
            "query_test_daily_branch": ("SELECT count(*) AS n, coalesce(sum(pg_column_size(t.*)), 0) AS size "
                                        "FROM query_test_daily_branch t WHERE day < $1", self.cutoff_day),
            "outbox_dead": ("SELECT count(*) AS n, coalesce(sum(pg_column_size(t.*)), 0) AS size "
                            "FROM outbox_dead t WHERE dead_at < $1", self.outbox_cutoff),
        }
        for table, (sql, arg) in queries.items():
            row = await c.fetchrow(sql, arg)
            r.removed[table].add(row["n"], row["size"])
            self.progress(f"would delete {row['n']} rows from {table}")
        if await self._attachments_exist():
            row = await c.fetchrow(
                "SELECT count(*) AS n, coalesce(sum(a.size_bytes), 0)::bigint AS size FROM attachments a "
                "JOIN executions e ON e.id = a.execution_id WHERE e.started_at < $1 AND a.state = 'stored'",
                self.cutoff)
            if self.storage_known:
                r.removed["attachment_objects"].add(row["n"], row["size"])
                self.progress(f"would delete {row['n']} attachment objects")
            elif row["n"]:
                r.notes.append(ATTACHMENTS_NOTE)

    # ------------------------------------------------------------------ steps

    async def _retrying(self, what: str, step: Callable[[], Awaitable[bool]]) -> bool:
        """Run ``step`` (one transaction) until it succeeds; a lock not had within lock_timeout (or a
        deadlock) is retried with backoff, then the step is deferred. Returns ``step``'s value."""
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                return await step()
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError, StorageUnavailable) as exc:
                # StorageUnavailable: the object store did not answer while removing the objects
                # of a batch; its rows stay (the transaction rolls back) until the store is back.
                if attempt == self.retries:
                    self.report.deferred.append(what)
                    self.progress(f"{what}: still busy after {self.retries + 1} tries ({exc}); left for the next run")
                    return False
                log.info("retention step busy; retrying", step=what, attempt=attempt + 1, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        return False

    async def _drop_partition(self, part: Partition) -> None:
        async def step() -> bool:
            async with self.conn.transaction():
                # Counted under the plain read lock of the count, which writes do not wait for: a
                # stronger lock on the partition held while DROP waits for `results` would make a
                # late write to this month (which locks `results` first) a deadlock. A row such a
                # write commits between the count and the drop is dropped uncounted.
                n = await self.conn.fetchval(f"SELECT count(*) FROM {part.name}")
                size = await self.conn.fetchval("SELECT pg_total_relation_size($1::regclass)", part.name)
                await self.conn.execute(f"DROP TABLE {part.name}")
            self.report.removed["results"].add(n, size)
            self.report.partitions_dropped.append(part.name)
            self.progress(f"dropped partition {part.name}: {n} results, {size} bytes")
            return True

        if not await self._retrying(f"drop {part.name}", step):
            self._kept_months.append(asyncpg.Range(part.lo, part.hi))

    async def _remove_executions(self, project: str) -> None:
        removed = 0
        while True:
            done = False

            async def step() -> bool:
                nonlocal done, removed
                async with self.conn.transaction():
                    picked = await self.conn.fetch(_PICK_EXECUTIONS, project, self.cutoff, min(self.batch, 1000),
                                                   self._kept_months)
                    if not picked:
                        done = True
                        return True
                    # As many executions as fit in `batch` results by their exact counters; the
                    # others are released at commit and picked next time. An execution bigger
                    # than a batch goes alone and first: its row now, so no writer can add to it
                    # any more, and its results right after, a batch at a time, by the sweep of
                    # results without an execution (_remove_orphan_results).
                    chosen, rows = [], 0
                    for ex in picked:
                        if rows + ex["total"] > self.batch:
                            if not chosen:
                                chosen.append(ex)
                            break
                        chosen.append(ex)
                        rows += ex["total"]
                    ids = [ex["id"] for ex in chosen]
                    objects = await self.remove_attachment_objects(project, ids)
                    res = {"n": 0, "size": 0}
                    if chosen[0]["total"] <= self.batch:
                        res = await self.conn.fetchrow(_DELETE_RESULTS_OF, [ex["started_at"] for ex in chosen], ids)
                    exe = await self.conn.fetchrow(_DELETE_EXECUTIONS, ids)
                self.report.removed["attachment_objects"].add(*objects)
                self.report.removed["results"].add(res["n"], res["size"])
                self.report.removed["executions"].add(exe["n"], exe["size"])
                removed += exe["n"]
                return True

            if not await self._retrying(f"executions of {project}", step) or done:
                break
        if removed:
            self.progress(f"project {project}: removed {removed} executions and their results")

    async def _remove_orphan_results(self, part: Partition) -> None:
        await self._delete_batches(f"results in {part.name}", "results",
                                   _DELETE_ORPHAN_RESULTS.format(part=part.name), self.cutoff)

    async def _remove_rollup_days(self, projects: list[str]) -> None:
        # Deltas of removed days still queued (ours, from the results' DELETE trigger, or a late
        # write's) would otherwise be applied by the rollup worker after the days are gone and
        # bring them back. Cleared first: a worker round holding some of them finishes before
        # this DELETE gets them, so the days deleted next include whatever that round applied.
        async def clear_queue() -> bool:
            await self.conn.execute("DELETE FROM query_rollup_queue WHERE day < $1", self.cutoff_day)
            return True

        await self._retrying("queued rollup deltas", clear_queue)
        for table in ("query_test_daily", "query_test_daily_branch"):
            for project in projects:
                await self._delete_batches(f"{table} of {project}", table,
                                           _DELETE_ROLLUP_DAYS.format(table=table), project, self.cutoff_day)

    async def _remove_outbox_dead(self) -> None:
        await self._delete_batches("outbox_dead", "outbox_dead", _DELETE_OUTBOX_DEAD, self.outbox_cutoff)

    async def _delete_batches(self, what: str, table: str, sql: str, *args) -> None:
        """Run a bounded DELETE (its last parameter is the batch size) until it deletes nothing."""
        total = 0
        while True:
            last = 0

            async def step() -> bool:
                nonlocal last
                row = await self.conn.fetchrow(sql, *args, self.batch)
                last = row["n"]
                self.report.removed[table].add(row["n"], row["size"])
                return True

            if not await self._retrying(what, step):
                break
            total += last
            if last == 0:
                break
        if total:
            self.progress(f"{what}: deleted {total} rows")

    # ------------------------------------------------------------------ attachments

    async def _attachments_exist(self) -> bool:
        if self._has_attachments is None:
            self._has_attachments = await self.conn.fetchval("SELECT to_regclass('attachments') IS NOT NULL")
        return self._has_attachments

    async def remove_attachment_objects(self, project: str, execution_ids: list[uuid.UUID]) -> tuple[int, int]:
        """Step "objects of removed executions": the stored attachment objects of executions about
        to be removed → (objects, bytes).

        A no-op while the ``attachments`` table does not exist (databases before V016). With it, the objects under ``<project>/<execution>/`` (the key layout of
        DESIGN.md) go through ``objects`` — within the caller's transaction and *before* the
        execution's rows, so that a failure leaves the execution for the next run instead of its
        objects without an owner. Without an ``objects`` remover the report says so, and the bucket
        lifecycle rule of docs/deploy.md must expire them.
        """
        if not execution_ids or not await self._attachments_exist():
            return 0, 0
        if self.objects is not None:
            return await self.objects([(project, eid) for eid in execution_ids])
        if ATTACHMENTS_NOTE not in self.report.notes:
            self.report.notes.append(ATTACHMENTS_NOTE)
            log.warning("attachment objects of removed executions are not deleted: no object store wired")
        return 0, 0


ATTACHMENTS_NOTE = ("attachment objects of removed executions are not deleted by this run: "
                    "expire them with the bucket lifecycle rule (docs/deploy.md, Data lifecycle)")

def store_remover(store, conn: asyncpg.Connection) -> ObjectRemover:
    """The :data:`ObjectRemover` of an opened object store (``atas.common.storage``): every object
    under ``<project>/<execution>/`` goes, unfinished multipart uploads are aborted; the bytes are
    the stored attachments' sizes, read on ``conn`` inside the step's transaction."""
    from .storage import delete_execution_objects

    async def remove(pairs: list[tuple[str, uuid.UUID]]) -> tuple[int, int]:
        size = await conn.fetchval(
            "SELECT coalesce(sum(size_bytes), 0) FROM attachments WHERE execution_id = ANY($1::uuid[]) "
            "AND state = 'stored'", [eid for _project, eid in pairs])
        objects = 0
        for project, eid in pairs:
            objects += await delete_execution_objects(store, project, str(eid))
        return objects, int(size)

    return remove


async def run_retention(dsn: str, *, days: int, dry_run: bool = False, batch: int = 5000,
                        lock_timeout_ms: int = 2000, progress: Progress | None = None,
                        storage=None, jwt_secret: str = "") -> Report:
    """Connect to ``dsn``, run retention once, and count what it removed in the metrics.

    ``storage`` (:class:`atas.common.storage.StorageSettings`, from ``STORAGE_URL``): the object
    store whose attachment objects of removed executions are deleted with them; without it they
    are left to the bucket's lifecycle rule (the summary says so)."""
    from atas.common.db import connect

    from . import retention_task

    store = None
    if storage is not None and not dry_run:
        from .storage import open_store

        store = open_store(storage, jwt_secret=jwt_secret)
    conn = await connect(dsn, application_name="atas-retention")
    try:
        objects = store_remover(store, conn) if store is not None else None
        report = await Retention(conn, days=days, dry_run=dry_run, batch=batch, lock_timeout_ms=lock_timeout_ms,
                                 progress=progress, objects=objects, storage_known=storage is not None).run()
    finally:
        await conn.close()
        if store is not None:
            await store.close()
    if not dry_run:
        retention_task.record(report)
    return report
