"""The bridge commits Kafka offsets only for events Redis has, without holding up its next poll."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from atas.common.bus import KafkaBus
from atas.common.events import encode_event
from atas.common.redis import create_redis
from atas.stream.bridge import Bridge
from atas.stream.fanout import Hub
from atas.stream.history import RedisHistory

from .conftest import TcpProxy, envelope, messages

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


PARTITIONS = 3  # of the kafka_settings fixture's topic


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(PARTITIONS)]


async def _committed(settings, group: str) -> dict[int, int]:
    """The group's committed offset per partition (0 where none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp.partition: await consumer.committed(tp) or 0
                for tp in await _partitions(consumer, settings.topic)}
    finally:
        await consumer.stop()


async def _end_offsets(settings) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, settings.topic)
        return {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _start_at_zero(settings, group: str) -> None:
    """Commit offset 0 everywhere, so a bridge of this fresh group reads from the start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, settings.topic)
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()


def _duplicates() -> float:
    return REGISTRY.get_sample_value("atas_stream_bridge_events_total", {"outcome": "duplicate"}) or 0.0


async def _eventually(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


async def test_offsets_follow_the_redis_writes_and_a_new_bridge_resumes_after_them(
        redis_settings, kafka_settings, prefix):
    bus = KafkaBus(kafka_settings)
    group = f"test-bridge-{uuid.uuid4().hex[:8]}"
    await _start_at_zero(kafka_settings, group)
    proxy = await TcpProxy(redis_settings.host, redis_settings.port).start()
    redis = create_redis(msgspec.structs.replace(redis_settings, host="127.0.0.1", port=proxy.port,
                                                 timeout_ms=500))
    direct = create_redis(redis_settings)
    history = RedisHistory(redis, prefix=prefix, max_len=1000, ttl_s=600, dedupe_ttl_s=600)
    pub = bus.publisher("test")
    await pub.start()
    bridges: list[Bridge] = []

    async def start_bridge() -> Bridge:
        bridge = Bridge(bus, history, Hub(), group=group, batch=100)
        bridges.append(bridge)
        await bridge.start()
        await asyncio.wait_for(bridge.ready.wait(), 60)
        return bridge

    async def stored() -> int:
        return await direct.xlen(history.key("demo"))

    try:
        bridge = await start_bridge()
        # Redis unreachable: the bridge reads the events but cannot write them, so it commits nothing.
        proxy.cut()
        first = [envelope("demo", execution=f"e{i % 6}", seq=i) for i in range(12)]  # every partition
        await pub.publish(messages(first))
        await asyncio.sleep(3 * Bridge.COMMIT_INTERVAL_S + 1)
        assert set((await _committed(kafka_settings, group)).values()) == {0}
        assert await stored() == 0

        # Redis back: the pending events are written, then their offsets committed.
        proxy.restore()
        await _eventually(lambda: _is(stored(), 12), what="events written")
        ends = await _end_offsets(kafka_settings)
        assert sum(ends.values()) == 12
        await _eventually(lambda: _is(_committed(kafka_settings, group), ends), timeout=10, what="commit")

        # A bridge taking over the group starts after the committed events: it reads only the new
        # ones (nothing redelivered, so no duplicate dropped), and the history has each event once.
        await bridge.stop()
        duplicates = _duplicates()
        second = [envelope("demo", execution=f"e{i % 6}", seq=100 + i) for i in range(6)]
        await pub.publish(messages(second))
        await start_bridge()
        await _eventually(lambda: _is(stored(), 18), what="new events written")
        entries = await direct.xrange(history.key("demo"))
        assert len(entries) == 18
        assert _duplicates() == duplicates
    finally:
        for b in bridges:
            await b.stop()
        await pub.stop()
        await redis.aclose()
        await direct.aclose()
        await proxy.close()


async def _is(awaitable, expected) -> bool:
    return await awaitable == expected


async def test_a_tombstone_record_is_skipped_not_a_dead_end(redis_settings, kafka_settings, prefix):
    """A record without a value (a Kafka tombstone) is counted invalid and passed; the next event flows."""
    from aiokafka import AIOKafkaProducer

    bus = KafkaBus(kafka_settings)
    group = f"test-bridge-{uuid.uuid4().hex[:8]}"
    await _start_at_zero(kafka_settings, group)
    redis = create_redis(redis_settings)
    history = RedisHistory(redis, prefix=prefix, max_len=1000, ttl_s=600, dedupe_ttl_s=600)
    bridge = Bridge(bus, history, Hub(), group=group, batch=100)
    raw = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers)
    await raw.start()
    pub = bus.publisher("test")
    await pub.start()
    try:
        await bridge.start()
        await asyncio.wait_for(bridge.ready.wait(), 60)
        event = envelope("demo", execution="e-same-key")
        await raw.send_and_wait(kafka_settings.topic, value=None, key=b"e-same-key")  # same partition
        await pub.publish(messages([event]))
        await _eventually(lambda: _is(redis.xlen(history.key("demo")), 1), what="event after the tombstone")
        entries = await redis.xrange(history.key("demo"))
        assert event.id.encode() in entries[0][1][b"e"]
    finally:
        await bridge.stop()
        await pub.stop()
        await raw.stop()
        await redis.aclose()


async def test_a_new_group_starts_at_the_recent_events_and_an_existing_one_at_its_commits(
        redis_settings, kafka_settings, prefix):
    """Stream pods deployed after ingest has published: a group that has committed nothing bridges
    the events of the last ``new_group_since_s`` seconds (not the whole retention, not only what
    comes next); once it has committed, its offsets decide, whatever the records' age."""
    from aiokafka import AIOKafkaProducer

    bus = KafkaBus(kafka_settings)
    group = f"test-bridge-{uuid.uuid4().hex[:8]}"
    redis = create_redis(redis_settings)
    history = RedisHistory(redis, prefix=prefix, max_len=1000, ttl_s=600, dedupe_ttl_s=600)
    raw = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers)
    await raw.start()
    pub = bus.publisher("test")
    await pub.start()
    two_hours_ago_ms = int((time.time() - 7200) * 1000)

    async def publish_old(events) -> None:
        for i, event in enumerate(events):
            await raw.send_and_wait(kafka_settings.topic, encode_event(event), key=event.execution_id.encode(),
                                    partition=i % PARTITIONS, timestamp_ms=two_hours_ago_ms)

    async def stored_ids() -> list[str]:
        return [msgspec.json.decode(fields[b"e"])["id"] for _, fields in await redis.xrange(history.key("demo"))]

    bridge = None
    try:
        old = [envelope("demo", execution=f"old{i}") for i in range(PARTITIONS)]
        await publish_old(old)                                        # beyond the window, every partition
        recent = [envelope("demo", execution=f"e{i % 6}", seq=i) for i in range(6)]
        await pub.publish(messages(recent))                           # before the stream pods exist

        bridge = Bridge(bus, history, Hub(), group=group, batch=100, new_group_since_s=3600)
        await bridge.start()
        await asyncio.wait_for(bridge.ready.wait(), 60)
        await _eventually(lambda: _is(redis.xlen(history.key("demo")), 6), what="the recent events")
        assert sorted(await stored_ids()) == sorted(e.id for e in recent)
        ends = await _end_offsets(kafka_settings)
        await _eventually(lambda: _is(_committed(kafka_settings, group), ends), timeout=15, what="commit")
        await bridge.stop()

        # Committed offsets win over the window: records stamped two hours ago, appended after the
        # commit (a producer with a skewed clock, a replay), are bridged all the same.
        late = [envelope("demo", execution=f"late{i}") for i in range(PARTITIONS)]
        await publish_old(late)
        bridge = Bridge(bus, history, Hub(), group=group, batch=100, new_group_since_s=3600)
        await bridge.start()
        await asyncio.wait_for(bridge.ready.wait(), 60)
        await _eventually(lambda: _is(redis.xlen(history.key("demo")), 6 + PARTITIONS), what="the late records")
        assert set(await stored_ids()) == {e.id for e in recent + late}
    finally:
        if bridge is not None:
            await bridge.stop()
        await pub.stop()
        await raw.stop()
        await redis.aclose()
