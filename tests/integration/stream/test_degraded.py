"""Limits and degraded modes: the connection cap, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import json
import uuid

import msgspec
import pytest

from atas.common.bus import KafkaBus, MemoryBus
from atas.stream.config import StreamConfig
from tests.conftest import make_settings

from .conftest import TcpProxy, envelope, messages, warm_up


async def test_the_connection_cap_answers_503_with_retry_after(apps, sse, http, token):
    app = await apps.start(make_settings(mode="dev"), StreamConfig(max_connections=2, retry_after_s=7),
                           bus=MemoryBus())
    auth = {"Authorization": f"Bearer {token()}"}
    held = [await sse(f"{app.url}/v1/stream?project=demo", auth) for _ in range(2)]
    for c in held:
        await c.read_until(lambda c: c.parser.last_id is not None)
    async with http.get(f"{app.url}/v1/stream?project=demo", headers=auth) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "7"
        assert (await r.json())["error"]["code"] == "capacity"
    await held[0].close()
    async with asyncio.timeout(20):  # the slot frees once the server notices (next heartbeat write)
        while app.state.hub.count > 1:
            await asyncio.sleep(0.1)
    again = await sse(f"{app.url}/v1/stream?project=demo", auth)
    assert again.status == 200


async def _next_chunk(client) -> None:
    """Wait for the next chunk (an event or a heartbeat) on a stream."""
    mark = (len(client.events), client.parser.comments, client.parser.last_id)
    await client.read_until(lambda c: (len(c.events), c.parser.comments, c.parser.last_id) != mark)


@pytest.mark.redis
@pytest.mark.kafka
async def test_redis_outage_keeps_streams_open_delivers_locally_and_heals(apps, sse, token, redis_settings,
                                                                          kafka_settings, prefix):
    proxy = await TcpProxy(redis_settings.host, redis_settings.port).start()
    try:
        via_proxy = msgspec.structs.replace(redis_settings, port=proxy.port, host="127.0.0.1", timeout_ms=1000)
        settings = make_settings(redis=via_proxy, kafka=kafka_settings)
        config = StreamConfig(redis_prefix=prefix, bridge_group=f"test-bridge-{uuid.uuid4().hex[:8]}",
                              heartbeat_s=0.3)
        a = await apps.start(settings, config)
        b = await apps.start(settings, config)
        async with asyncio.timeout(60):
            while not (a.state.bridge.assigned and b.state.bridge.assigned):
                await asyncio.sleep(0.1)
        bus = KafkaBus(kafka_settings)
        auth = {"Authorization": f"Bearer {token(projects=['*'])}"}
        warm = await sse(f"{a.url}/v1/stream?project=warmup", auth)
        await warm_up(bus, warm, "warmup")
        c1 = await sse(f"{a.url}/v1/stream?project=demo", auth)
        c2 = await sse(f"{b.url}/v1/stream?project=demo", auth)
        pub = bus.publisher("test")
        await pub.start()
        try:
            first = envelope("demo", seq=0)
            await pub.publish(messages([first]))
            for c in (c1, c2):
                await c.read_events(1)

            proxy.cut()  # Redis goes away
            during = [envelope("demo", execution=f"x{i}", seq=i) for i in range(12)]  # all partitions
            await pub.publish(messages(during))
            # each event reaches the clients of the pod whose bridge consumed it, right away
            want = {e.id for e in during}

            def union_has_all() -> bool:
                seen = {json.loads(e.data)["id"] for c in (c1, c2) for e in c.data_events()}
                return want <= seen

            async with asyncio.timeout(60):
                while not union_has_all():
                    await asyncio.gather(*(_next_chunk(c) for c in (c1, c2)))
            comments = [c.parser.comments for c in (c1, c2)]
            for c, n in zip((c1, c2), comments):  # the streams stay open: heartbeats go on
                await c.read_until(lambda c, n=n: c.parser.comments > n + 1)

            proxy.restore()  # Redis is back: pending writes land, Pub/Sub resubscribes, clients catch up
            everything = [first.id] + [e.id for e in during]

            def healed() -> bool:
                return (all({json.loads(e.data)["id"] for e in c.data_events()} >= set(everything) for c in (c1, c2))
                        and c1.parser.last_id == c2.parser.last_id)

            async with asyncio.timeout(60):
                while not healed():
                    await asyncio.gather(*(_next_chunk(c) for c in (c1, c2)))
            # each client has every event exactly once (those it got during the outage were not
            # sent again, only their positions), and both resume points are the newest position
            for c in (c1, c2):
                ids = [json.loads(e.data)["id"] for e in c.data_events()]
                assert sorted(ids) == sorted(everything), ids
            resumed = await sse(f"{b.url}/v1/stream?project=demo", {**auth, "Last-Event-ID": c2.parser.last_id})
            nxt = envelope("demo", seq=99)
            await pub.publish(messages([nxt]))
            got = await resumed.read_events(1)
            assert [json.loads(e.data)["id"] for e in got] == [nxt.id]
        finally:
            await pub.stop()
    finally:
        await proxy.close()
