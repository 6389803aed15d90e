"""Ingest and query on one app (as `atas dev` composes them): what ingest writes, query reads at once.

Goes through the real write path: the rollup trigger sees ingest's INSERT statements, and the events
its outbox relay publishes invalidate the query cache.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import pytest
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.bus import MemoryBus
from atas.common.config import CacheTtls
from atas.common.engines import ENGINES, install_engines
from atas.ingest.app import setup as setup_ingest
from atas.ingest.config import IngestConfig
from atas.query.app import setup as setup_query
from atas.query.config import QueryConfig
from atas.query.rollups import settle
from tests.conftest import make_settings

pytestmark = pytest.mark.pg


@pytest.fixture
async def both(pg):
    settings = make_settings(db_dsn=pg, mode="dev", cache_ttl=CacheTtls(status=3600, recent=3600))
    app = create_app(settings, "dev")
    install_engines(app, application_name="atas-dev-test", bus=MemoryBus())
    setup_ingest(app, IngestConfig(relay_poll_s=0.2, relay_backoff_max_s=1.0))
    setup_query(app, QueryConfig())
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def test_reads_reflect_ingest_writes_and_events(both, token):
    h = {"Authorization": f"Bearer {token()}"}
    statuses = ("passed", "failed", "error", "skipped")
    sent = []
    ids = []
    for n in range(4):
        resp = await both.post("/v1/executions", json={"id": str(uuid.uuid4()), "project": "demo", "name": f"run {n}",
                                                       "environment": "ci", "commit": "abc"}, headers=h)
        assert resp.status in (200, 201), await resp.text()
        ids.append((await resp.json())["id"])

    async def post(i: int, execution_id: str) -> None:
        batch = [{"test_id": f"t{k}", "name": f"test {k}", "status": statuses[(i + k) % 4], "attempt": 1 + i // 4,
                  "duration_ms": 10 * k} for k in range(30)]
        sent.extend(batch)
        resp = await both.post(f"/v1/executions/{execution_id}/results", json={"results": batch}, headers=h)
        assert resp.status == 200, await resp.text()

    # Concurrent batches of different executions touch the same rollup rows: no deadlock, exact sums.
    await asyncio.gather(*(post(i, ids[i % 4]) for i in range(8)))
    execution = ids[0]
    # Cached once the relay's events of the batches above have been handled (they invalidate it).
    async with asyncio.timeout(30):
        while True:
            first = await both.get(f"/v1/executions/{execution}", params={"project": "demo"}, headers=h)
            assert (await first.json())["status"] == "running"
            if first.headers["X-Cache"] == "hit":
                break
            await asyncio.sleep(0.1)

    fin = await both.post(f"/v1/executions/{execution}/finish", headers=h)
    assert fin.status == 200, await fin.text()
    async with asyncio.timeout(30):
        while True:
            view = await (await both.get(f"/v1/executions/{execution}", params={"project": "demo"}, headers=h)).json()
            if view["status"] != "running":
                break
            await asyncio.sleep(0.05)
    assert view["status"] == "failed"

    await settle(both.server.app[ENGINES].pool)  # the rollup worker runs every 500 ms; do not wait for it
    failing = await (await both.get("/v1/tests/failing", params={"project": "demo", "limit": "200"}, headers=h)).json()
    fails, runs = defaultdict(int), defaultdict(int)
    for r in sent:
        runs[r["test_id"]] += 1
        if r["status"] in ("failed", "error"):
            fails[r["test_id"]] += 1
    assert {t["test_id"]: (t["failures"], t["runs"]) for t in failing["items"]} == {
        t: (fails[t], runs[t]) for t in fails}
    overview = await (await both.get("/v1/dashboard/overview", params={"project": "demo"}, headers=h)).json()
    assert overview["results"] == len(sent)
    assert overview["results_by_status"]["error"] == sum(1 for r in sent if r["status"] == "error")
