"""The Redis history itself: positions, dedupe and publication survive Redis losing its script cache."""

from __future__ import annotations

import asyncio

import pytest

from atas.common.events import encode_event
from atas.common.redis import create_redis
from atas.stream.history import RedisHistory, ZERO

from .conftest import envelope

pytestmark = pytest.mark.redis


async def test_appends_publish_once_even_after_redis_forgets_its_scripts(redis_settings, prefix):
    redis = create_redis(redis_settings)
    listener = create_redis(redis_settings)
    pubsub = listener.pubsub()
    history = RedisHistory(redis, prefix=prefix, max_len=100, ttl_s=60, dedupe_ttl_s=60)
    try:
        await pubsub.subscribe(history.channel("demo"))
        events = [envelope("demo", seq=i) for i in range(4)]
        items = [("demo", e.id, encode_event(e)) for e in events]

        first = await history.append(items[:2])
        await redis.script_flush()  # what a restart or a failover to a fresh replica does
        second = await history.append(items[1:])  # one redelivered, two new

        assert None not in first and second[0] is None and None not in second[1:]
        positions = first + second[1:]
        assert positions == sorted(positions) and len(set(positions)) == 4
        assert await history.tail("demo") == positions[-1]
        page = await history.read_after("demo", ZERO, 10)
        assert [e.event_id for e in page.events] == [e.id for e in events]

        published = []
        async with asyncio.timeout(10):
            while len(published) < 4:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if msg:
                    published.append(msg["data"].partition(b"\n")[0].decode())
        assert published == [f"{ms}-{seq}" for ms, seq in positions]  # each event once, in order
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await redis.aclose()
