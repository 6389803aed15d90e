"""A status read right after an ingest event reflects it: the consumer drops the cached entry.

The status TTL is an hour here, so only the invalidation can explain a fresh answer.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from atas.common.bus import KafkaBus, MemoryBus
from atas.common.config import CacheTtls
from atas.common.events import encode_event, new_event
from atas.query.routes import QUERY_STATE
from tests.conftest import make_settings
from tests.integration.query.conftest import Dataset, query_client

HOUR_TTL = CacheTtls(status=3600, recent=3600)


async def _finish(pool, execution_id) -> None:
    """What ingest does when a run finishes: the row changes, then an event is published."""
    await pool.execute("UPDATE executions SET status = 'passed', finished_at = now(), updated_at = now() "
                       "WHERE id = $1", execution_id)


def _event(execution_id, seq: int) -> tuple[bytes, bytes]:
    event = new_event("execution.finished", project="demo", execution_id=str(execution_id), seq=seq,
                      data={"status": "passed", "finished_at": datetime.now(timezone.utc).isoformat(),
                            "totals": {}})
    return str(execution_id).encode(), encode_event(event)


async def _scenario(client, pool, dataset: Dataset, publish, token) -> None:
    auth = {"Authorization": f"Bearer {token()}"}
    state = client.server.app[QUERY_STATE]
    [execution] = dataset.make("demo", datetime.now(timezone.utc) - timedelta(minutes=1), count=1,
                               span=timedelta(seconds=1))
    execution.status = "running"
    await dataset.write([execution])
    url = f"/v1/executions/{execution.id}"
    params = {"project": "demo"}

    # The consumer is live once it has processed an event (a warm-up for an unrelated execution).
    async with asyncio.timeout(60):
        while state.invalidator is None or state.invalidator.processed == 0:
            await publish([_event(uuid.uuid4(), 1)])
            await asyncio.sleep(0.5)

    first = await client.get(url, params=params, headers=auth)
    assert (await first.json())["status"] == "running"
    listed = await client.get("/v1/executions", params=params, headers=auth)
    assert (await listed.json())["items"][0]["status"] == "running"
    cached = await client.get(url, params=params, headers=auth)
    assert cached.headers["X-Cache"] == "hit"

    await _finish(pool, execution.id)
    await publish([_event(execution.id, 2)])
    async with asyncio.timeout(30):
        while True:
            resp = await client.get(url, params=params, headers=auth)
            if (await resp.json())["status"] == "passed":
                break
            await asyncio.sleep(0.05)
    listed = await client.get("/v1/executions", params=params, headers=auth)
    assert (await listed.json())["items"][0]["status"] == "passed"


@pytest.mark.pg
@pytest.mark.redis
@pytest.mark.kafka
async def test_status_read_after_a_kafka_event_reflects_it(pg, redis_settings, kafka_settings, token, dataset):
    settings = make_settings(db_dsn=pg, redis=redis_settings, kafka=kafka_settings, cache_ttl=HOUR_TTL)
    publisher = KafkaBus(kafka_settings).publisher("test")
    await publisher.start()
    try:
        async with query_client(settings) as client:
            await _scenario(client, dataset.pool, dataset, publisher.publish, token)
    finally:
        await publisher.stop()


@pytest.mark.pg
async def test_status_invalidation_over_the_in_process_bus_and_cache(pg, token, dataset):
    """`atas dev`: MemoryBus and the in-process cache engine, same business code."""
    bus = MemoryBus()
    settings = make_settings(db_dsn=pg, mode="dev", cache_ttl=HOUR_TTL)
    publisher = bus.publisher()
    async with query_client(settings, bus=bus) as client:
        await _scenario(client, dataset.pool, dataset, publisher.publish, token)
