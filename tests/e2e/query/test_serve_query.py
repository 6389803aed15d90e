"""`atas serve query` as a process: it answers dashboards over HTTP, documents them, and stops cleanly."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import asyncpg
import pytest

from tests.conftest import TEST_JWT_SECRET, make_settings, settings_env
from tests.helpers import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.pg, pytest.mark.redis, pytest.mark.kafka]


def _get(url: str, token: str | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_serve_query_answers_documents_and_drains(pg, redis_settings, kafka_settings, token, tmp_path):
    async with asyncpg.create_pool(pg, min_size=1, max_size=1) as pool:
        await pool.execute("INSERT INTO projects (key) VALUES ('demo')")
        await pool.execute("INSERT INTO executions (id, project, name, started_at, total, passed) "
                           "VALUES (gen_random_uuid(), 'demo', 'nightly', now() - interval '1 hour', 3, 3)")
    env = settings_env(make_settings(db_dsn=pg, redis=redis_settings, kafka=kafka_settings))
    assert env["JWT_SECRET"] == TEST_JWT_SECRET
    proc = ServiceProcess(["serve", "query"], env, tmp_path, "query")
    try:
        proc.wait_healthy()
        status, _, body = _get(proc.url + "/openapi.json")
        assert status == 200
        paths = json.loads(body)["paths"]
        for path in ("/v1/dashboard/overview", "/v1/trends", "/v1/executions", "/v1/executions/{id}",
                     "/v1/executions/{id}/results", "/v1/tests/failing", "/v1/tests/slowest", "/v1/tests/flaky",
                     "/v1/tests/{test_id}/history"):
            assert "get" in paths[path], path

        status, headers, body = _get(proc.url + "/v1/dashboard/overview?project=demo", token())
        assert status == 200, body
        overview = json.loads(body)
        assert overview["executions"] == 1 and overview["results_by_status"]["passed"] == 3
        assert headers["X-Cache"] == "miss"
        assert _get(proc.url + "/v1/dashboard/overview?project=demo", token())[1]["X-Cache"] == "hit"
        status, _, body = _get(proc.url + "/v1/trends?project=demo&bucket=minute", token())
        assert status == 400 and json.loads(body)["error"]["field"] == "bucket"
        assert _get(proc.url + "/v1/dashboard/overview?project=demo")[0] == 401

        status, _, body = _get(proc.url + "/metrics")
        assert b'atas_query_cache_requests_total{kind="overview",outcome="hit"}' in body
    finally:
        assert proc.stop() == 0, proc.logs()
