"""PostgreSQL stops under running `atas serve` processes: ingest and query leave the balancer
(/readyz 503), stream stays in it (it never uses PostgreSQL), and nobody is restarted (/healthz
200: loops retrying a database that is down are waiting, not stuck).

A PostgreSQL of this test alone (a private stack folder), the session's Redis and Kafka.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from atas.common.migrate import migrate_dsn
from atas.common.stack import Stack
from tests.conftest import TEST_JWT_SECRET
from tests.helpers import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.pg, pytest.mark.redis, pytest.mark.kafka]

STALL_S = 10  # the smallest bound HEALTH_LOOP_STALL_SECONDS accepts


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_postgres_down_takes_ingest_and_query_out_and_leaves_stream_in(tmp_path, redis_server, kafka_server):
    stack = Stack(tmp_path / "pg")
    procs: list[ServiceProcess] = []
    try:
        db_url = stack.up(["postgres"])["DB_URL"]
        await migrate_dsn(db_url)
        env = {"DB_URL": db_url, "REDIS_HOST": redis_server[0], "REDIS_PORT": str(redis_server[1]),
               "KAFKA_BOOTSTRAP_SERVERS": kafka_server, "JWT_SECRET": TEST_JWT_SECRET, "LOG_LEVEL": "warning",
               "HEALTH_LOOP_STALL_SECONDS": str(STALL_S), "QUERY_INVALIDATION": "true",
               "STREAM_BRIDGE_GROUP": f"health-{tmp_path.name}"}
        import os

        env = {**{k: v for k, v in os.environ.items() if k.startswith(("PATH", "HOME", "VIRTUAL", "PYTHON"))}, **env}
        procs = [ServiceProcess(["serve", svc], env, tmp_path, svc) for svc in ("ingest", "query", "stream")]
        ingest, query, stream = procs
        for p in procs:
            p.wait_healthy(60, path="/readyz")
        status, body = get(stream.url + "/readyz")
        assert "postgres" not in body["checks"], body  # no database at all: DB_URL is ignored

        stack.down()
        deadline = time.monotonic() + 20
        while True:
            states = {p: get(p.url + "/readyz")[0] for p in procs}
            if states[ingest] == 503 and states[query] == 503:
                break
            assert time.monotonic() < deadline, {p.url: s for p, s in states.items()}
            time.sleep(0.2)
        # Well past the stall bound: every loop keeps beating while PostgreSQL is away.
        until = time.monotonic() + STALL_S + 3
        while time.monotonic() < until:
            status, body = get(stream.url + "/readyz")
            assert status == 200, body
            for p in procs:
                status, body = get(p.url + "/healthz")
                assert status == 200, (p.url, body, p.logs())
            time.sleep(0.5)
        status, body = get(ingest.url + "/readyz")
        assert status == 503 and body["checks"]["postgres"].startswith("error"), body
    finally:
        for p in procs:
            p.stop()
        stack.down(purge=True)
