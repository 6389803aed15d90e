"""Caching behaviour a dashboard user notices: hits, 304s, one aggregation per stampede, Redis outages."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import timedelta

import pytest

from atas.common.config import CacheTtls, RedisSettings
from atas.query.config import QueryConfig
from atas.query.routes import QUERY_STATE
from tests.conftest import make_settings
from tests.helpers import free_port
from tests.integration.query.conftest import Dataset, query_client
from tests.integration.query.test_aggregates import NOW, START, iso

pytestmark = [pytest.mark.pg]


@pytest.fixture
async def small(dataset: Dataset):
    await dataset.write(dataset.make("demo", START, count=40, span=timedelta(days=6), tests=6))
    return dataset


def _state(client):
    return client.server.app[QUERY_STATE]


@pytest.mark.redis
async def test_client_errors_are_400_with_a_reason_other_projects_403_and_their_executions_404(pg, redis_settings, token, small):
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    cases = [
        ("/v1/dashboard/overview", {"project": "demo", "from": "yesterday"}, "from"),
        ("/v1/dashboard/overview", {"project": "demo", "from": "2026-02-02", "to": "2026-02-01"}, "from"),
        ("/v1/trends", {"project": "demo", "from": "2020-01-01", "to": "2026-01-01"}, "to"),
        ("/v1/trends", {"project": "demo", "bucket": "fortnight"}, "bucket"),
        ("/v1/executions", {"project": "demo", "cursor": "not-a-cursor"}, "cursor"),
        ("/v1/executions", {"project": "demo", "cursor": "WyJycyIsImEiLDFd"}, "cursor"),  # another endpoint's
        ("/v1/executions", {"project": "demo", "limit": "500"}, "limit"),
        ("/v1/executions", {"project": "demo", "limit": "ten"}, "limit"),
        ("/v1/executions", {}, "project"),
        ("/v1/executions/not-a-uuid", {"project": "demo"}, "id"),
        ("/v1/tests/flaky", {"project": "demo", "to": "2026-13-45"}, "to"),
    ]
    async with query_client(settings) as client:
        for path, params, field in cases:
            resp = await client.get(path, params=params, headers=auth)
            assert resp.status == 400, (path, params, await resp.text())
            error = (await resp.json())["error"]
            assert error.get("field") == field or f"`{field}`" in error["message"], (path, params, error)
        resp = await client.get("/v1/dashboard/overview", params={"project": "other"},
                                headers={"Authorization": f"Bearer {token(projects=['demo'])}"})
        assert resp.status == 403
        resp = await client.get("/v1/dashboard/overview", params={"project": "demo"},
                                headers={"Authorization": f"Bearer {token(scopes=['ingest:write'])}"})
        assert resp.status == 403
        assert (await client.get("/v1/dashboard/overview", params={"project": "demo"})).status == 401
        # another tenant's execution, asked for through one's own project: 404 like a missing one
        # (its existence is not confirmed), for status and results
        theirs = await small.pool.fetchval(
            "INSERT INTO executions (id, project, name, started_at) "
            "VALUES (gen_random_uuid(), 'other', 'x', now()) RETURNING id")
        for path in (f"/v1/executions/{theirs}", f"/v1/executions/{theirs}/results"):
            assert (await client.get(path, params={"project": "demo"}, headers=auth)).status == 404
            assert (await client.get(path, headers=auth)).status == 404
            # a token that may read both projects just does not find it in the wrong one
            both = {"Authorization": f"Bearer {token(projects=['demo', 'other'])}"}
            assert (await client.get(path, params={"project": "demo"}, headers=both)).status == 404
            assert (await client.get(path, params={"project": "other"}, headers=both)).status == 200
        missing = "00000000-0000-0000-0000-000000000000"
        assert (await client.get(f"/v1/executions/{missing}", params={"project": "demo"}, headers=auth)).status == 404


@pytest.mark.redis
async def test_etag_answers_304_and_hits_are_counted(pg, redis_settings, token, small):
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    params = {"project": "demo", "from": iso(START), "to": iso(NOW)}
    async with query_client(settings) as client:
        first = await client.get("/v1/trends", params=params, headers=auth)
        assert first.headers["X-Cache"] == "miss"
        etag = first.headers["ETag"]
        again = await client.get("/v1/trends", params=params, headers={**auth, "If-None-Match": etag})
        assert again.status == 304 and again.headers["X-Cache"] == "hit" and again.headers["ETag"] == etag
        metrics = await (await client.get("/metrics")).text()
    assert 'atas_query_cache_requests_total{kind="trends",outcome="hit"}' in metrics
    assert 'atas_query_cache_requests_total{kind="trends",outcome="miss"}' in metrics


@pytest.mark.redis
async def test_200_concurrent_requests_on_a_cold_key_aggregate_once_across_two_pods(pg, redis_settings, token, small):
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    params = {"project": "demo", "from": iso(START), "to": iso(NOW - timedelta(minutes=7))}
    async with query_client(settings) as pod_a, query_client(settings) as pod_b:
        responses = await asyncio.gather(*(
            (pod_a if i % 2 else pod_b).get("/v1/dashboard/overview", params=params, headers=auth)
            for i in range(200)))
        bodies = {await r.read() for r in responses}
        assert {r.status for r in responses} == {200}
        assert len(bodies) == 1
        runs = (_state(pod_a).cache.aggregations.get("overview", 0)
                + _state(pod_b).cache.aggregations.get("overview", 0))
    assert runs == 1


@pytest.mark.redis
async def test_keyset_pages_return_every_execution_once_while_new_ones_arrive(pg, redis_settings, token, small):
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    before = {str(e.id) for e in small.executions}
    seen: list[str] = []
    params = {"project": "demo", "limit": "7"}
    async with query_client(settings) as client:
        while True:
            resp = await client.get("/v1/executions", params=params, headers=auth)
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            seen.extend(i["id"] for i in body["items"])
            # New executions arrive between pages, newer than everything listed so far.
            await small.write(small.make("demo", NOW + timedelta(minutes=len(seen)), count=3, span=timedelta(seconds=30)))
            if body["next_cursor"] is None:
                break
            assert body["next_cursor"] in resp.headers["Link"]
            params["cursor"] = body["next_cursor"]
    assert len(seen) == len(set(seen))
    assert set(seen) == before
    started = [e.started_at for e in small.executions if str(e.id) in before]
    assert len(started) == len(before)


class RedisProcess:
    """A private redis-server on a fixed port that the test can stop and start again."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is required"
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


async def _wait_redis(port: int) -> None:
    from redis.asyncio import Redis

    client = Redis(host="127.0.0.1", port=port)
    try:
        async with asyncio.timeout(15):
            while True:
                try:
                    await client.ping()
                    return
                except Exception:  # noqa: BLE001 - not up yet
                    await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_every_endpoint_answers_with_redis_down_and_caching_resumes_by_itself(pg, token, small, tmp_path):
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        await _wait_redis(redis.port)
        settings = make_settings(db_dsn=pg, redis=RedisSettings(host="127.0.0.1", port=redis.port, timeout_ms=500))
        auth = {"Authorization": f"Bearer {token()}"}
        execution = small.executions[0]
        rng = {"project": "demo", "from": iso(START), "to": iso(NOW)}
        requests = [
            ("/v1/dashboard/overview", rng), ("/v1/trends", rng), ("/v1/executions", {"project": "demo"}),
            (f"/v1/executions/{execution.id}", {"project": "demo"}),
            (f"/v1/executions/{execution.id}/results", {"project": "demo"}),
            ("/v1/tests/failing", rng), ("/v1/tests/slowest", rng), ("/v1/tests/flaky", rng),
            (f"/v1/tests/{execution.results[0].test_id.replace('/', '%2F')}/history", rng),
        ]
        # Without the near cache, so that every read after the outage really asks Redis.
        async with query_client(settings, QueryConfig(near_cache_ms=0, redis_retry_ms=50)) as client:
            healthy = {}
            for path, params in requests:
                resp = await client.get(path, params=params, headers=auth)
                assert resp.status == 200, (path, await resp.text())
                healthy[path] = await resp.json()
            redis.stop()
            for path, params in requests:
                resp = await client.get(path, params=params, headers=auth)
                assert resp.status == 200, (path, await resp.text())
                assert await resp.json() == healthy[path]
                if "X-Cache" in resp.headers:
                    assert resp.headers["X-Cache"] == "bypass", path
            redis.start()
            await _wait_redis(redis.port)
            outcomes = []
            async with asyncio.timeout(30):
                while outcomes[-2:] != ["miss", "hit"]:
                    await asyncio.sleep(0.06)
                    resp = await client.get("/v1/trends", params=rng, headers=auth)
                    assert resp.status == 200
                    outcomes.append(resp.headers["X-Cache"])
            metrics = await (await client.get("/metrics")).text()
        assert 'atas_query_cache_requests_total{kind="trends",outcome="bypass"}' in metrics
    finally:
        redis.stop()


async def test_in_process_cache_engine_without_redis(pg, token, small):
    """`atas dev` has no Redis: the same business code caches in process."""
    settings = make_settings(db_dsn=pg, mode="dev", cache_ttl=CacheTtls(overview=60))
    auth = {"Authorization": f"Bearer {token()}"}
    params = {"project": "demo", "from": iso(START), "to": iso(NOW)}
    async with query_client(settings) as client:
        outcomes = [(await client.get("/v1/dashboard/overview", params=params, headers=auth)).headers["X-Cache"]
                    for _ in range(3)]
        page = await client.get("/v1/executions", params={"project": "demo"}, headers=auth)
        assert page.headers["X-Cache"] == "miss"
        assert (await client.get("/v1/executions", params={"project": "demo"}, headers=auth)).headers["X-Cache"] == "hit"
    assert outcomes == ["miss", "hit", "hit"]


@pytest.mark.redis
async def test_an_error_about_one_key_skips_the_cache_for_that_request_only(pg, redis_settings, redis_client,
                                                                            token, small):
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    rng = {"project": "demo", "from": iso(START), "to": iso(NOW)}
    # The key of the recent-pages hash holds a string (WRONGTYPE on HGET/HSET).
    await redis_client.set("atas:cache:v1:recent:demo", b"not a hash")
    async with query_client(settings) as client:
        resp = await client.get("/v1/executions", params={"project": "demo"}, headers=auth)
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Cache"] == "bypass"
        assert len((await resp.json())["items"]) == 40
        # Redis is fine: the other keys are still cached (no circuit opened for the whole pod).
        assert (await client.get("/v1/trends", params=rng, headers=auth)).headers["X-Cache"] == "miss"
        assert (await client.get("/v1/dashboard/overview", params=rng, headers=auth)).headers["X-Cache"] == "miss"
        assert _state(client).cache.available


@pytest.mark.redis
async def test_a_ttl_of_zero_turns_a_views_cache_off_without_tripping_the_circuit(pg, redis_settings, token, small):
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    rng = {"project": "demo", "from": iso(START), "to": iso(NOW)}
    async with query_client(settings, QueryConfig(cache_ttl_tests=0)) as client:
        outcomes = []
        for _ in range(2):
            resp = await client.get("/v1/tests/failing", params=rng, headers=auth)
            assert resp.status == 200, await resp.text()
            outcomes.append(resp.headers["X-Cache"])
        assert outcomes == ["miss", "miss"]
        assert _state(client).cache.aggregations["tests_failing"] == 2
        # Other views still use Redis.
        assert (await client.get("/v1/trends", params=rng, headers=auth)).headers["X-Cache"] == "miss"
        assert (await client.get("/v1/trends", params=rng, headers=auth)).headers["X-Cache"] == "hit"
