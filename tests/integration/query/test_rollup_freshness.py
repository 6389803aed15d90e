"""Per-test answers are not pinned in cache while the rollup worker catches up with ingest.

The overview counts results from the executions' counters at once, but lists failing tests from
the rollups, which the worker applies a round later. An overview read in between is partial
(1 failed result, no failing test); once the worker has applied the batch, the next read must list
the test instead of serving that partial answer for CACHE_TTL_OVERVIEW. Over both cache engines
and through the real ingest write path (ingest and query on one app, as `atas dev` composes them).
"""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.bus import MemoryBus
from atas.common.config import RedisSettings
from atas.common.engines import install_engines
from atas.ingest.app import setup as setup_ingest
from atas.ingest.config import IngestConfig
from atas.query import cache as c
from atas.query.app import setup as setup_query
from atas.query.config import QueryConfig
from tests.conftest import make_settings

pytestmark = pytest.mark.pg

_INVALIDATED = re.compile(r"^atas_query_rollup_invalidations_total ([0-9.e+]+)$", re.M)


async def _invalidations(client: TestClient) -> float:
    """The worker's count of projects whose per-test answers it invalidated (a process-wide counter)."""
    text = await (await client.get("/metrics")).text()
    match = _INVALIDATED.search(text)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("engine", ["in-process", pytest.param("redis", marks=pytest.mark.redis)])
async def test_overview_lists_a_failing_test_once_the_worker_applied_it_not_a_ttl_later(
        engine, request, pg, pg_pool, token):
    redis = None
    if engine == "redis":  # the shared server, not flushed: this test's keys are its own (project)
        host, port = request.getfixturevalue("redis_server")
        redis = RedisSettings(host=host, port=port, timeout_ms=2000)
    settings = make_settings(db_dsn=pg, redis=redis, mode="dev")  # default TTLs: overview 60 s
    app = create_app(settings, "dev")
    install_engines(app, application_name="atas-freshness-test", bus=MemoryBus())
    setup_ingest(app, IngestConfig(relay_poll_s=0.2))
    setup_query(app, QueryConfig(invalidation_enabled=False))  # events play no part here
    # A project name of its own: other suites share this Redis, and cache keys name the project.
    project = f"fresh-{uuid.uuid4().hex[:10]}"
    h = {"Authorization": f"Bearer {token(projects=[project])}"}
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        resp = await client.post("/v1/executions", json={"project": project, "name": "nightly",
                                                         "environment": "ci"}, headers=h)
        assert resp.status in (200, 201), await resp.text()
        execution = (await resp.json())["id"]
        before = await _invalidations(client)

        # Hold the worker's next round back (as a slow round would be): it claims the queued deltas,
        # then waits for this lock to write the rollups. Readers are not blocked.
        async with pg_pool.acquire() as blocker:
            slow_round = blocker.transaction()
            await slow_round.start()
            await blocker.execute("LOCK TABLE query_test_daily, query_test_daily_branch IN EXCLUSIVE MODE")
            batch = [{"test_id": f"tests/test_a.py::test_{k}", "name": f"test_{k}",
                      "status": "failed" if k == 3 else "passed", "duration_ms": 5 + k} for k in range(6)]
            resp = await client.post(f"/v1/executions/{execution}/results", json={"results": batch}, headers=h)
            assert resp.status == 200, await resp.text()

            # Right after the import: the counters have the failure, the rollups not yet.
            first = await client.get("/v1/dashboard/overview", params={"project": project}, headers=h)
            partial = await first.json()
            assert first.headers["X-Cache"] == "miss"
            assert partial["results_by_status"] == {"passed": 5, "failed": 1, "skipped": 0, "error": 0}
            assert partial["top_failing_tests"] == []
            again = await client.get("/v1/dashboard/overview", params={"project": project}, headers=h)
            assert await again.json() == partial
            # Cached while the worker has not applied the batch (on the shared Redis, another suite's
            # FLUSHALL may turn this one into a miss; the answer is the same).
            assert again.headers["X-Cache"] == "hit" or engine == "redis"
            await slow_round.commit()

        # Wait for the worker: the batch left the queue and the cache was told about the project.
        async with asyncio.timeout(30):
            while (await pg_pool.fetchval("SELECT count(*) FROM query_rollup_queue WHERE project = $1", project)
                   or await _invalidations(client) <= before):
                await asyncio.sleep(0.05)

        after = await client.get("/v1/dashboard/overview", params={"project": project}, headers=h)
        overview = await after.json()
        assert after.headers["X-Cache"] == "miss"  # not the partial answer, still within its 60 s TTL
        assert overview["results_by_status"] == partial["results_by_status"]
        assert [(t["test_id"], t["failures"], t["runs"]) for t in overview["top_failing_tests"]] == [
            ("tests/test_a.py::test_3", 1, 1)]
        failing = await (await client.get("/v1/tests/failing", params={"project": project}, headers=h)).json()
        assert [t["test_id"] for t in failing["items"]] == ["tests/test_a.py::test_3"]
        # and the complete answer is what gets cached now
        cached = await client.get("/v1/dashboard/overview", params={"project": project}, headers=h)
        assert await cached.json() == overview
        assert cached.headers["X-Cache"] == "hit" or engine == "redis"
    finally:
        await client.close()


async def _two_pods(redis_client) -> tuple[c.ResponseCache, c.ResponseCache]:
    # Two processes on one Redis, without near cache (its bound is tested in the unit tests).
    return c.ResponseCache(c.RedisCacheEngine(redis_client)), c.ResponseCache(c.RedisCacheEngine(redis_client))


@pytest.mark.redis
async def test_a_worker_round_on_one_pod_invalidates_what_another_pod_cached(redis_client):
    pod_a, pod_b = await _two_pods(redis_client)
    project = f"fresh-{uuid.uuid4().hex[:10]}"
    overview = c.overview_entry(project, "k", 60)
    failing = c.tests_entry("tests_failing", project, "k", 120)
    trends = c.trends_entry(project, "k", 300)
    answers = iter(range(1000))

    async def compute() -> bytes:
        return b'{"n":%d}' % next(answers)

    for entry in (overview, failing, trends):
        assert (await pod_a.fetch(entry, compute)).outcome == "miss"
        assert (await pod_b.fetch(entry, compute)).outcome == "hit"
    await pod_b.rollups_applied([project])  # pod B's worker applied deltas of the project
    assert (await pod_a.fetch(overview, compute)).outcome == "miss"
    assert (await pod_a.fetch(failing, compute)).outcome == "miss"
    assert (await pod_a.fetch(trends, compute)).body == b'{"n":2}'  # reads no rollup: kept
    assert (await pod_b.fetch(overview, compute)).outcome == "hit"  # the new answer is shared
    # another project's answers are not touched
    assert (await pod_a.fetch(c.overview_entry("elsewhere-" + project, "k", 60), compute)).outcome == "miss"
    await pod_a.rollups_applied(["elsewhere-" + project])
    assert (await pod_b.fetch(overview, compute)).outcome == "hit"


@pytest.mark.redis
async def test_an_answer_read_before_the_worker_commit_is_not_served_after_it(redis_client):
    pod_a, pod_b = await _two_pods(redis_client)
    project = f"fresh-{uuid.uuid4().hex[:10]}"
    entry = c.overview_entry(project, "k", 60)

    async def stale() -> bytes:
        # The aggregation read the database; meanwhile pod B's worker commits and invalidates.
        await pod_b.rollups_applied([project])
        return b'{"top_failing_tests":[]}'

    async def fresh() -> bytes:
        return b'{"top_failing_tests":["t"]}'

    first = await pod_a.fetch(entry, stale)
    assert first.outcome == "miss" and first.body == b'{"top_failing_tests":[]}'  # this request gets it
    second = await pod_b.fetch(entry, fresh)
    assert (second.outcome, second.body) == ("miss", b'{"top_failing_tests":["t"]}')
    third = await pod_a.fetch(entry, stale)
    assert (third.outcome, third.body) == ("hit", b'{"top_failing_tests":["t"]}')


@pytest.mark.redis
async def test_settle_tells_the_cache_like_the_worker(pg_pool, redis_client):
    """`settle` (tests, benchmark) drains the queue itself: the worker then has nothing to report."""
    from atas.query.rollups import settle

    cache = c.ResponseCache(c.RedisCacheEngine(redis_client))
    project = f"fresh-{uuid.uuid4().hex[:10]}"
    entry = c.overview_entry(project, "k", 60)

    async def body() -> bytes:
        return b"{}"

    await cache.fetch(entry, body)
    execution = uuid.uuid4()
    await pg_pool.execute("INSERT INTO projects (key) VALUES ($1)", project)
    await pg_pool.execute("INSERT INTO executions (id, project, name, started_at) VALUES ($1, $2, 'x', now())",
                          execution, project)
    await pg_pool.execute("INSERT INTO results (execution_started_at, execution_id, project, test_id, attempt, id, "
                          "name, status) SELECT started_at, id, project, 't', 1, gen_random_uuid(), 't', 'failed' "
                          "FROM executions WHERE id = $1", execution)
    await settle(pg_pool, on_applied=cache.rollups_applied)
    assert (await cache.fetch(entry, body)).outcome == "miss"

