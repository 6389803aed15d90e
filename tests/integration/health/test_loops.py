"""/healthz tells a stuck background loop from an idle one, and names it.

Each loop's step is frozen in-process (its step awaits an Event the test holds), on a real
PostgreSQL (and Redis for the Pub/Sub loop); /healthz must answer 503 naming that loop once it has
been silent longer than HEALTH_LOOP_STALL_SECONDS, and 200 again once the step returns. A loop
that waits on purpose (Kafka refusing connections, the relay backing off) keeps beating.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.config import KafkaSettings
from atas.common.engines import install_engines
from atas.common.stack import free_port
from atas.ingest.config import IngestConfig
from tests.conftest import make_settings

STALL_S = 2.5  # above every bounded wait of the loops under test (polls of 1 s at most)
FAST_INGEST = IngestConfig(relay_poll_s=0.2, relay_backoff_max_s=0.5, relay_publish_timeout_s=1.0)


@contextlib.asynccontextmanager
async def serve(service: str, settings, config=None):
    app = create_app(settings, service)
    install_engines(app, application_name=f"atas-{service}-health-test")
    importlib.import_module(f"atas.{service}.app").setup(app, config)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def health(client: TestClient) -> tuple[int, dict]:
    resp = await client.get("/healthz")
    return resp.status, await resp.json()


async def wait_health(client: TestClient, status: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got, body = await health(client)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"/healthz stayed {got}: {body}"
        await asyncio.sleep(0.1)


def _freeze(monkeypatch, target: str, gate: asyncio.Event) -> None:
    """Replace the coroutine function ``target`` (module path + attribute) with one that waits for
    ``gate`` before doing what it did."""
    module_name, _, attr = target.rpartition(":")
    owner = importlib.import_module(module_name)
    for part in attr.split(".")[:-1]:
        owner = getattr(owner, part)
    name = attr.split(".")[-1]
    real = getattr(owner, name)

    async def frozen(*args, **kwargs):
        await gate.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(owner, name, frozen)


LOOPS = [
    # (service, loop name, the step that is frozen)
    ("ingest", "outbox-relay", "atas.ingest.relay:OutboxRelay.relay_once"),
    ("ingest", "ingest-partitions", "atas.ingest.app:ensure_partitions"),
    ("query", "query-rollups", "atas.query.rollups:drain"),
    ("query", "query-invalidator", "atas.query.invalidation:Invalidator._invalidate"),
    ("stream", "stream-bridge", "atas.stream.history:MemoryHistory.append"),
    ("stream", "stream-ticker", "atas.stream.fanout:Hub.wake_due"),
]


@pytest.mark.pg
@pytest.mark.parametrize(("service", "loop", "step"), LOOPS, ids=[loop for _, loop, _ in LOOPS])
async def test_a_frozen_loop_fails_healthz_naming_it_and_recovers(pg, monkeypatch, token, service, loop, step):
    gate = asyncio.Event()
    _freeze(monkeypatch, step, gate)
    settings = make_settings(db_dsn=pg if service != "stream" else None, loop_stall_s=STALL_S)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(gate.set)  # a failed assertion must not leave the loop frozen at shutdown
        client = await stack.enter_async_context(serve(service, settings,
                                                       FAST_INGEST if service == "ingest" else None))
        # Give the loop something to do where it only steps on work (events to relay or to handle).
        if service == "ingest":
            headers = {"Authorization": f"Bearer {token(scopes=['ingest:write'], projects=['demo'])}"}
            resp = await client.post("/v1/executions", json={"project": "demo", "name": "n"}, headers=headers)
            assert resp.status == 201, await resp.text()
        else:
            from atas.common.engines import ENGINES
            from atas.common.events import encode_event, new_event

            async with asyncio.timeout(10):  # subscribed, so that the event below reaches it
                if service == "query":
                    from atas.query.routes import QUERY_STATE

                    while not client.app[QUERY_STATE].invalidator.assigned():
                        await asyncio.sleep(0.05)
                else:
                    from atas.stream.state import STREAM

                    await client.app[STREAM].bridge.ready.wait()
            engines = client.app[ENGINES]
            event = new_event("execution.started", project="demo", execution_id="00000000-0000-0000-0000-000000000001",
                              seq=1, data={})
            publisher = engines.bus.publisher()
            await publisher.start()
            await publisher.publish([(event.execution_id.encode(), encode_event(event))])
        body = await wait_health(client, 503, timeout=STALL_S + 10)
        assert body["stuck"] == [loop], body
        assert body["loops"][loop] >= STALL_S
        metrics = await (await client.get("/metrics")).text()
        assert f'atas_loop_last_beat_timestamp_seconds{{loop="{loop}"}}' in metrics
        gate.set()
        body = await wait_health(client, 200, timeout=10)
        assert body["status"] == "ok" and loop in body["loops"]


@pytest.mark.pg
async def test_a_relay_waiting_for_an_unreachable_kafka_stays_healthy_and_asks_for_no_more_pods(pg, token):
    """Kafka refuses connections: the relay backs off and retries, beating all along. The backlog
    the HPA scales ingest on reads 0 (more relays could not publish either); its age still grows."""
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens there
    settings = make_settings(db_dsn=pg, kafka=kafka, loop_stall_s=STALL_S)
    from atas.ingest import metrics as ingest_metrics

    async with serve("ingest", settings, FAST_INGEST) as client:
        headers = {"Authorization": f"Bearer {token(scopes=['ingest:write'], projects=['demo'])}"}
        resp = await client.post("/v1/executions", json={"project": "demo", "name": "n"}, headers=headers)
        assert resp.status == 201, await resp.text()
        deadline = time.monotonic() + 3 * STALL_S + 5  # past a backlog sample (every 5 s)
        while time.monotonic() < deadline:
            status, body = await health(client)
            assert status == 200, body
            await asyncio.sleep(0.25)
        assert ingest_metrics.OUTBOX_AGE._value.get() > 0, "the backlog was sampled while failing"
        assert ingest_metrics.OUTBOX_BACKLOG._value.get() == 0


@pytest.mark.redis
async def test_a_pubsub_connection_stuck_in_its_handshake_fails_healthz(redis_settings, monkeypatch):
    gate = asyncio.Event()
    _freeze(monkeypatch, "atas.stream.fanout:RedisFanout._handshake", gate)
    settings = make_settings(redis=redis_settings, loop_stall_s=STALL_S)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(gate.set)
        client = await stack.enter_async_context(serve("stream", settings))
        body = await wait_health(client, 503, timeout=STALL_S + 10)
        assert body["stuck"] == ["stream-pubsub"], body
        gate.set()
        await wait_health(client, 200, timeout=10)
