"""Two `atas serve stream` processes and one `atas serve ingest` on real PostgreSQL, Redis, Kafka.

What a live monitor sees: an ingested run reaches a client on each stream pod exactly once; a client
that drops and reconnects to the *other* pod gets exactly what it missed; SIGTERM ends streams with
a final event and the process exits cleanly.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import uuid

import aiohttp
import pytest

from atas.common.bus import KafkaBus
from tests.conftest import make_settings, settings_env
from tests.helpers import ServiceProcess
from tests.integration.stream.conftest import SseClient, warm_up

pytestmark = [pytest.mark.e2e, pytest.mark.pg, pytest.mark.redis, pytest.mark.kafka]


@pytest.fixture
async def stack(tmp_path, pg, redis_settings, kafka_settings):
    settings = make_settings(db_dsn=pg, redis=redis_settings, kafka=kafka_settings, drain_seconds=5.0)
    env = {**settings_env(settings),
           "STREAM_REDIS_PREFIX": f"atas:e2e:{uuid.uuid4().hex[:8]}:",
           "STREAM_BRIDGE_GROUP": f"e2e-bridge-{uuid.uuid4().hex[:8]}",
           "STREAM_HEARTBEAT_SECONDS": "1", "STREAM_CLOSE_SPREAD_SECONDS": "1",
           "INGEST_RELAY_POLL_SECONDS": "0.05", "LOG_LEVEL": "info"}
    procs = [ServiceProcess(["serve", "stream"], env, tmp_path, "stream-1"),
             ServiceProcess(["serve", "stream"], env, tmp_path, "stream-2"),
             ServiceProcess(["serve", "ingest"], env, tmp_path, "ingest")]
    try:
        await asyncio.gather(*(asyncio.to_thread(p.wait_healthy, 60) for p in procs))
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):  # both bridges own partitions: the group is balanced
                while True:
                    texts = [await (await http.get(p.url + "/metrics")).text() for p in procs[:2]]
                    if all(re.search(r"^atas_stream_bridge_assigned 1\.0$", t, re.M) for t in texts):
                        break
                    await asyncio.sleep(0.2)
        yield procs, KafkaBus(kafka_settings)
    finally:
        for p in procs:
            await asyncio.to_thread(p.stop, 30)


def _data(events):
    return [json.loads(e.data) for e in events]


async def test_an_ingested_run_reaches_each_pod_once_and_resume_crosses_pods(stack, token):
    (s1, s2, ingest), bus = stack
    tok = token(projects=["*"])
    auth = {"Authorization": f"Bearer {tok}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        warm = await SseClient(http, f"{s1.url}/v1/stream?project=warmup", headers=auth).open()
        await warm_up(bus, warm, "warmup")
        await warm.close()

        on1 = await SseClient(http, f"{s1.url}/v1/stream?project=web", headers=auth).open()
        on2 = await SseClient(http, f"{s2.url}/v1/stream?project=web", headers=auth).open()
        for c in (on1, on2):
            await c.read_until(lambda c: c.parser.last_id is not None)
        exe = str(uuid.uuid4())
        r = await http.post(f"{ingest.url}/v1/executions", headers=auth,
                            json={"id": exe, "project": "web", "name": "nightly", "branch": "main"})
        assert r.status in (200, 201), await r.text()
        batch = {"results": [{"test_id": f"t{i}", "name": f"t{i}", "status": "failed" if i == 0 else "passed"}
                             for i in range(5)]}
        r = await http.post(f"{ingest.url}/v1/executions/{exe}/results", headers=auth, json=batch)
        assert r.status in (200, 201), await r.text()
        for c in (on1, on2):
            got = _data(await c.read_events(2, timeout=60))
            assert [e["type"] for e in got] == ["execution.started", "results.recorded"]
            counts = got[1]["data"]["counts"]
            assert counts.get("passed") == 4 and counts.get("failed") == 1
        # a client of pod 1 drops; the run goes on; it reconnects to pod 2 with its Last-Event-ID
        last_id = on1.parser.last_id
        await on1.close()
        more = {"results": [{"test_id": f"u{i}", "name": f"u{i}", "status": "passed"} for i in range(3)]}
        r = await http.post(f"{ingest.url}/v1/executions/{exe}/results", headers=auth, json=more)
        assert r.status in (200, 201), await r.text()
        r = await http.post(f"{ingest.url}/v1/executions/{exe}/finish", headers=auth, json={})
        assert r.status in (200, 201), await r.text()
        got2 = _data(await on2.read_events(4, timeout=60))
        assert [e["type"] for e in got2] == ["execution.started", "results.recorded", "results.recorded",
                                             "execution.finished"]
        resumed = await SseClient(http, f"{s2.url}/v1/stream?project=web",
                                  headers={**auth, "Last-Event-ID": last_id}).open()
        replay = _data(await resumed.read_events(2, timeout=30))
        assert [e["id"] for e in replay] == [e["id"] for e in got2[2:]]
        # exactly once: nothing else arrives on pod 2 before the next heartbeat after the finish
        comments = on2.parser.comments
        await on2.read_until(lambda c: c.parser.comments > comments + 1)
        assert len(on2.data_events()) == 4
        for c in (on2, resumed):
            await c.close()


async def test_sigterm_ends_streams_with_a_final_event_and_exits_cleanly(stack, token):
    (s1, _s2, _ingest), _bus = stack
    auth = {"Authorization": f"Bearer {token()}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as http:
        clients = [await SseClient(http, f"{s1.url}/v1/stream?project=demo", headers=auth).open()
                   for _ in range(3)]
        for c in clients:
            await c.read_until(lambda c: c.parser.last_id is not None)
        s1.terminate(signal.SIGTERM)
        for c in clients:
            got = await c.read_events(1, kinds={"end"}, timeout=30)
            assert json.loads(got[0].data)["reason"] == "shutdown"
            await c.read_until(lambda c: c.eof, timeout=30)
            await c.close()
    assert await asyncio.to_thread(s1.wait, 30) == 0
