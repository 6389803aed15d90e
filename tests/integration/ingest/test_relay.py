"""The outbox relay with the in-process bus: NOTIFY wake-ups, several relays side by side."""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import pytest

from atas.common.bus import MemoryBus
from atas.common.events import decode_event

from .conftest import FAST, relay_of, results, start, wait_until

pytestmark = pytest.mark.pg


async def _drain(sub, want: int) -> list:
    got = []

    async def enough():
        got.extend(await sub.poll(0.2))
        return len(got) >= want

    await wait_until(enough)
    got.extend(await sub.poll(0.2))  # anything beyond `want` would be a duplicate
    return [decode_event(m.value) for m in got]


async def test_notify_wakes_the_relay_long_before_its_polling_interval(ingest, auth):
    bus = MemoryBus()
    sub = bus.subscription("t", from_beginning=True)
    await sub.start()
    # With an hour between polls, only LISTEN/NOTIFY can deliver these within the test's time.
    client = await ingest(bus=bus, config=msgspec.structs.replace(FAST, relay_poll_s=3600))
    h = auth()
    await asyncio.sleep(0.5)  # the relay's first (empty) round is done: it now sleeps on NOTIFY
    ex = await start(client, h)
    await client.post(f"/v1/executions/{ex['id']}/results", json={"results": results(3)}, headers=h)
    events = await _drain(sub, 2)
    assert [e.type for e in events] == ["execution.started", "results.recorded"]
    await sub.stop()


async def test_two_relays_share_the_outbox_without_duplicating_events(ingest, auth, pg):
    bus = MemoryBus()
    sub = bus.subscription("t", from_beginning=True)
    await sub.start()
    small = msgspec.structs.replace(FAST, relay_batch=3)  # many rounds, so both relays get work
    pods = [await ingest(bus=bus, config=small), await ingest(bus=bus, config=small)]
    h = auth()
    executions = [await start(pods[i % 2], h) for i in range(4)]

    async def send(i: int, k: int):
        ex = executions[i]
        resp = await pods[k % 2].post(f"/v1/executions/{ex['id']}/results",
                                      json={"results": results(5, prefix=f"{k}-")}, headers=h)
        assert resp.status == 200

    await asyncio.gather(*(send(i, k) for i in range(4) for k in range(10)))
    events = await _drain(sub, 4 + 40)
    counts = Counter(e.id for e in events)
    assert len(counts) == 44 and set(counts.values()) == {1}
    # per execution, every seq arrived (relays may interleave executions' events, never lose one)
    for ex in executions:
        assert sorted(e.seq for e in events if e.execution_id == ex["id"]) == list(range(1, 12))
    assert relay_of(pods[0]).published + relay_of(pods[1]).published == 44
    await sub.stop()


class _FlakyBus:
    """The in-process bus behind a publisher that refuses its first ``failures`` batches."""

    def __init__(self, failures: int):
        self.inner = MemoryBus()
        self.topic = self.inner.topic
        self.failures = failures
        self.publishers = 0

    def publisher(self, client_id="atas"):
        from atas.common.bus import PublishError

        bus = self
        bus.publishers += 1
        inner = self.inner.publisher(client_id)

        class Flaky:
            async def start(self):
                await inner.start()

            async def stop(self):
                await inner.stop()

            async def publish(self, messages):
                if bus.failures > 0:
                    bus.failures -= 1
                    raise PublishError("NotLeaderForPartitionError: broker went away")
                await inner.publish(messages)

        return Flaky()


async def test_a_refused_publish_is_retried_with_a_fresh_producer_and_delivered(ingest, auth, pg_pool):
    from prometheus_client import REGISTRY

    def failures() -> float:
        return REGISTRY.get_sample_value("atas_relay_failures_total", {"stage": "publish"}) or 0.0

    before = failures()
    bus = _FlakyBus(failures=3)
    sub = bus.inner.subscription("t", from_beginning=True)
    await sub.start()
    client = await ingest(bus=bus)
    h = auth()
    ex = await start(client, h)
    events = await _drain(sub, 1)
    assert [e.type for e in events] == ["execution.started"] and events[0].execution_id == ex["id"]
    assert await pg_pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert bus.failures == 0 and failures() - before == 3
    assert bus.publishers == 4  # a fresh producer after each refusal
    await sub.stop()


async def test_an_event_no_broker_would_take_is_set_aside_and_the_rest_flows(ingest, auth, pg_pool):
    """One oversized outbox row (Kafka refuses > 1 MB on every attempt) must not hold up every event
    behind it: it moves to outbox_dead, with its reason, and the others are delivered."""
    import uuid

    from prometheus_client import REGISTRY

    def dead() -> float:
        return REGISTRY.get_sample_value("atas_relay_dead_events_total") or 0.0

    before = dead()
    bus = MemoryBus()
    sub = bus.subscription("t", from_beginning=True)
    await sub.start()
    big_id = await pg_pool.fetchval(
        "INSERT INTO outbox (event_id, event_key, payload) VALUES ($1, $2, $3) RETURNING id",
        uuid.uuid4(), b"k", b"x" * 1_100_000)
    client = await ingest(bus=bus)
    h = auth()
    ex = await start(client, h)
    events = await _drain(sub, 1)
    assert [(e.type, e.execution_id) for e in events] == [("execution.started", ex["id"])]
    assert await pg_pool.fetchval("SELECT count(*) FROM outbox") == 0
    row = await pg_pool.fetchrow("SELECT id, reason, length(payload) AS size FROM outbox_dead")
    assert (row["id"], row["size"]) == (big_id, 1_100_000) and "larger than" in row["reason"]
    assert dead() - before == 1
    await sub.stop()


async def test_a_batch_of_long_escaped_failures_still_makes_an_event_kafka_takes(ingest, auth):
    """Each failed test listed in results.recorded is bounded in characters, but names of control
    characters are escaped to 6 bytes each: the list is also bounded in bytes (then truncated)."""
    bus = MemoryBus()
    sub = bus.subscription("t", from_beginning=True)
    await sub.start()
    client = await ingest(bus=bus)
    h = auth()
    ex = await start(client, h)
    noisy = "\x01" * 1000
    batch = [{"test_id": f"t{i}-" + "x" * 1000, "name": noisy, "status": "failed", "error_type": noisy,
              "error_message": noisy} for i in range(30)]  # ~570 KB listed in full
    resp = await client.post(f"/v1/executions/{ex['id']}/results", json={"results": batch}, headers=h)
    assert resp.status == 200, await resp.text()
    got = []

    async def recorded():
        got.extend(await sub.poll(0.2))
        return any(decode_event(m.value).type == "results.recorded" for m in got)

    await wait_until(recorded)
    (message,) = [m for m in got if decode_event(m.value).type == "results.recorded"]
    event = decode_event(message.value)
    assert len(message.value) < 400_000
    assert event.data["failed_truncated"] and 0 < len(event.data["failed"]) < 30
    await sub.stop()
