"""Round trips through the real broker and the real Redis, with the clients the services use."""

import asyncio
import uuid

import pytest

from atas.common.bus import KafkaBus
from atas.common.redis import create_redis


@pytest.mark.kafka
async def test_kafka_produce_consume_round_trip_with_commit(kafka_settings):
    bus = KafkaBus(kafka_settings)
    group = f"test-{uuid.uuid4().hex[:8]}"
    sub = bus.subscription(group, from_beginning=True)
    await sub.start()
    pub = bus.publisher("test")
    await pub.start()
    try:
        sent = [(f"exec-{i % 3}".encode(), f"event-{i}".encode()) for i in range(50)]
        await pub.publish(sent)
        got = []
        async with asyncio.timeout(30):
            while len(got) < len(sent):
                got.extend(await sub.poll(1.0))
        assert sorted(m.value for m in got) == sorted(v for _, v in sent)
        # per-key order is kept (same key, same partition)
        for key in {k for k, _ in sent}:
            assert [m.value for m in got if m.key == key] == [v for k, v in sent if k == key]
        await sub.commit()
    finally:
        await sub.stop()
    # the committed group resumes after what it processed: nothing is redelivered
    again = bus.subscription(group, from_beginning=True)
    await again.start()
    try:
        await pub.publish([(b"exec-x", b"after-commit")])
        got = []
        async with asyncio.timeout(30):
            while not got:
                got.extend(await again.poll(1.0))
        assert [m.value for m in got] == [b"after-commit"]
    finally:
        await again.stop()
        await pub.stop()


@pytest.mark.kafka
async def test_kafka_commit_after_a_rebalance_covers_only_owned_partitions(kafka_settings):
    """A member that noted offsets of 3 partitions, then lost some to a new member, can still commit:
    its own partitions are committed, the others are left to their new owner."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    bus = KafkaBus(kafka_settings)
    group = f"test-{uuid.uuid4().hex[:8]}"
    pub = bus.publisher("test")
    await pub.start()
    first = bus.subscription(group, from_beginning=True)
    second = bus.subscription(group, from_beginning=True)
    await first.start()
    try:
        await pub.publish([(f"k{i}".encode(), b"v") for i in range(30)])  # every partition gets some
        noted: dict[int, int] = {}
        async with asyncio.timeout(30):
            while sum(noted.values()) < 30 or len(noted) < 3:
                for m in await first.poll(1.0):
                    noted[m.partition] = m.offset + 1
        epoch = first.epoch()
        await second.start()  # a second member joins: partitions are split between the two
        async with asyncio.timeout(60):
            while not second.assigned() or first.epoch() == epoch or len(_owned(first)) == 3:
                await first.poll(0.2)
                await second.poll(0.2)
        mine = _owned(first)
        await first.commit(noted)  # offsets of a revoked partition too: must not fail the whole commit
        check = AIOKafkaConsumer(bootstrap_servers=kafka_settings.bootstrap_servers, group_id=group)
        await check.start()
        try:
            committed = {p: await check.committed(TopicPartition(kafka_settings.topic, p)) for p in range(3)}
        finally:
            await check.stop()
        assert mine and all(committed[p] == noted[p] for p in mine)
        assert all(committed[p] is None for p in set(range(3)) - mine)
    finally:
        await second.stop()
        await first.stop()
        await pub.stop()


def _owned(sub) -> set[int]:
    return {tp.partition for tp in sub._consumer.assignment()}


@pytest.mark.redis
async def test_redis_pubsub_round_trip(redis_settings):
    client = create_redis(redis_settings)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe("atas:test:channel")
        first = await pubsub.get_message(timeout=2)
        assert first["type"] == "subscribe"
        assert await client.publish("atas:test:channel", b"hello") == 1
        async with asyncio.timeout(5):
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if msg:
                    break
        assert msg["data"] == b"hello"
    finally:
        await pubsub.aclose()
        await client.aclose()


@pytest.mark.redis
async def test_redis_pool_waits_instead_of_failing_when_exhausted(redis_settings):
    settings = type(redis_settings)(host=redis_settings.host, port=redis_settings.port, timeout_ms=5000,
                                    pool_max_active=2, pool_max_idle=2)
    client = create_redis(settings)
    try:
        # 20 concurrent slow commands through 2 connections: all succeed, none raise "too many".
        results = await asyncio.gather(*(client.blpop([f"atas:test:empty:{i}"], timeout=0.05) for i in range(20)))
        assert len(results) == 20
        assert len(client.connection_pool._available_connections) <= 2
    finally:
        await client.aclose()
