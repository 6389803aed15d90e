"""Outbox → Kafka through the real broker: every committed batch arrives, Kafka outages lose
nothing, a relay that dies mid-flight leads to redelivery (same event ids), never to loss."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import asyncpg
import msgspec
import pytest

from atas.common.bus import KafkaBus
from atas.common.config import KafkaSettings
from atas.common.events import decode_event
from atas.ingest.relay import OutboxRelay

from .conftest import FAST, results, start, wait_until

pytestmark = [pytest.mark.pg, pytest.mark.kafka]


async def _consume(settings: KafkaSettings, want, timeout: float = 60.0):
    """Read the topic from the beginning until ``want(events)`` holds; returns (events, messages)."""
    sub = KafkaBus(settings).subscription(f"test-{uuid.uuid4().hex[:8]}", from_beginning=True)
    await sub.start()
    messages = []
    try:
        async with asyncio.timeout(timeout):
            while not want([decode_event(m.value) for m in messages]):
                messages.extend(await sub.poll(0.5))
    finally:
        await sub.stop()
    return [decode_event(m.value) for m in messages], messages


async def _outbox_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()


async def test_every_committed_batch_arrives_on_kafka_with_matching_counts(ingest, auth, pg, kafka_settings):
    client = await ingest(kafka=kafka_settings)
    h = auth()
    executions = [await start(client, h) for _ in range(3)]
    statuses = ("passed", "failed", "skipped", "error")

    async def send(ex, k):
        batch = results(20, prefix=f"b{k}-", status_of=lambda i: statuses[(i * (k + 1)) % 4])
        resp = await client.post(f"/v1/executions/{ex['id']}/results", json={"results": batch}, headers=h)
        assert resp.status == 200
        return ex["id"], await resp.json()

    answers = await asyncio.gather(*(send(ex, k) for ex in executions for k in range(8)))
    for ex in executions:
        assert (await client.post(f"/v1/executions/{ex['id']}/finish", headers=h)).status == 200
    expected = 3 + len(answers) + 3

    events, messages = await _consume(kafka_settings, lambda ev: len({e.id for e in ev}) >= expected)
    assert all(m.key == e.execution_id.encode() for m, e in zip(messages, events))
    recorded = [e for e in events if e.type == "results.recorded"]
    for ex in executions:
        mine = [e for e in recorded if e.execution_id == ex["id"]]
        sent = sorted(a["accepted"] for eid, a in answers if eid == ex["id"])
        assert sorted(e.data["accepted"] for e in mine) == sent
        # counts by status in the events add up to the execution's stored counters
        by_status = Counter()
        for e in mine:
            by_status.update(e.data["counts"])
        finished = [e for e in events if e.execution_id == ex["id"] and e.type == "execution.finished"][0]
        totals = finished.data["totals"]
        assert dict(by_status) == {k: totals[k] for k in ("passed", "failed", "skipped", "error") if totals[k]}
        # failed tests of each batch are listed in its event
        for e in mine:
            assert len(e.data.get("failed", [])) == e.data["counts"].get("failed", 0) + e.data["counts"].get("error", 0)
        # per execution, seq runs 1..n
        assert sorted(e.seq for e in events if e.execution_id == ex["id"]) == list(range(1, 8 + 3))
    assert await wait_until(lambda: _zero(pg))


async def _failed_attempts(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM outbox WHERE attempts > 0 AND last_error IS NOT NULL"))
    finally:
        await conn.close()


async def _zero(dsn):
    return await _outbox_count(dsn) == 0


class _DiesAfterPublish:
    """A publisher that publishes for real, then never returns: the process dies before it can
    delete what it published (the test cancels the relay at that point)."""

    def __init__(self, inner):
        self.inner = inner
        self.published = asyncio.Event()

    async def start(self):
        await self.inner.start()

    async def stop(self):
        await self.inner.stop()

    async def publish(self, messages):
        await self.inner.publish(messages)
        self.published.set()
        await asyncio.Event().wait()


class _Bus:
    def __init__(self, bus, publisher):
        self.topic, self._publisher = bus.topic, publisher

    def publisher(self, client_id="atas"):
        return self._publisher


async def test_a_relay_killed_mid_flight_leads_to_redelivery_with_the_same_event_ids(
        ingest, auth, pg, pg_pool, kafka_settings):
    client = await ingest(kafka=kafka_settings, config=msgspec.structs.replace(FAST, relay_enabled=False))
    h = auth()
    ex = await start(client, h)
    for k in range(3):
        await client.post(f"/v1/executions/{ex['id']}/results", json={"results": results(5, prefix=f"k{k}-")},
                          headers=h)
    ids_in_outbox = {str(r["event_id"]) for r in await pg_pool.fetch("SELECT event_id FROM outbox")}
    assert len(ids_in_outbox) == 4

    bus = KafkaBus(kafka_settings)
    dying = _DiesAfterPublish(bus.publisher("dying"))
    doomed = OutboxRelay(pool=lambda: pg_pool, dsn=pg, bus=_Bus(bus, dying), config=FAST)
    doomed.start()
    await asyncio.wait_for(dying.published.wait(), 30)
    doomed._task.cancel()  # killed between Kafka's ack and the DELETE's commit
    await asyncio.gather(doomed._task, return_exceptions=True)
    await doomed.stop()
    assert await _outbox_count(pg) == 4  # nothing was deleted: the claim rolled back

    survivor = OutboxRelay(pool=lambda: pg_pool, dsn=pg, bus=bus, config=FAST)
    survivor.start()
    try:
        assert await wait_until(lambda: _zero(pg))
    finally:
        await survivor.stop()
    events, messages = await _consume(kafka_settings, lambda ev: len(ev) >= 8)
    assert len(events) == 8
    counts = Counter(e.id for e in events)
    assert set(counts) == ids_in_outbox and set(counts.values()) == {2}
    # a duplicate is byte-for-byte the same event
    by_id = {}
    for m, e in zip(messages, events):
        assert by_id.setdefault(e.id, m.value) == m.value


@pytest.mark.timeout(300)
async def test_kafka_down_requests_still_succeed_and_every_event_arrives_after_restart(
        ingest, auth, pg, private_kafka):
    settings = KafkaSettings(bootstrap_servers=private_kafka.bootstrap, topic=f"atas.events.outage-{uuid.uuid4().hex[:6]}")
    await KafkaBus(settings).ensure_topic(partitions=3)
    client = await ingest(kafka=settings)
    h = auth()
    ex = await start(client, h)
    await client.post(f"/v1/executions/{ex['id']}/results", json={"results": results(10, prefix="before")}, headers=h)
    assert await wait_until(lambda: _zero(pg))  # relayed while Kafka was up

    await asyncio.to_thread(private_kafka.stop)
    statuses = []
    for k in range(5):
        resp = await client.post(f"/v1/executions/{ex['id']}/results",
                                 json={"results": results(10, prefix=f"down{k}-")}, headers=h)
        statuses.append(resp.status)
    fin = await client.post(f"/v1/executions/{ex['id']}/finish", headers=h)
    statuses.append(fin.status)
    assert statuses == [200] * 6
    assert await _outbox_count(pg) == 6  # committed, waiting for Kafka
    # keep Kafka down until the relay has seen a publish fail (it records the error on the rows)
    assert await wait_until(lambda: _failed_attempts(pg), timeout=90)

    await asyncio.to_thread(private_kafka.restart)
    assert await wait_until(lambda: _zero(pg), timeout=120)
    events, _ = await _consume(settings, lambda ev: len({e.id for e in ev}) >= 8, timeout=60)
    assert len({e.id for e in events}) == 8
    assert Counter(e.type for e in {e.id: e for e in events}.values()) == {
        "execution.started": 1, "results.recorded": 6, "execution.finished": 1}
    finished = [e for e in events if e.type == "execution.finished"][0]
    assert finished.data["totals"]["total"] == 60
