"""The in-process event engine keeps the Kafka contract the services rely on."""

import asyncio

from atas.common.bus import MemoryBus


async def test_groups_each_see_every_message_and_resume_after_commit():
    bus = MemoryBus()
    a, b = bus.subscription("a"), bus.subscription("b")
    await a.start()
    await b.start()
    pub = bus.publisher()
    await pub.publish([(b"k1", b"one"), (b"k2", b"two")])
    assert [m.value for m in await a.poll(0.1)] == [b"one", b"two"]
    assert [m.value for m in await b.poll(0.1)] == [b"one", b"two"]
    await a.commit()
    # b restarts without committing: it gets its messages again (at-least-once)
    await b.stop()
    await b.start()
    assert [m.value for m in await b.poll(0.1)] == [b"one", b"two"]
    await b.commit()
    assert bus._log == []  # everything committed by every group is dropped


async def test_commit_of_explicit_offsets_keeps_the_rest_for_redelivery():
    bus = MemoryBus()
    sub = bus.subscription("g")
    await sub.start()
    await bus.publisher().publish([(b"k", b"one"), (b"k", b"two"), (b"k", b"three")])
    got = await sub.poll(0.1)
    await sub.commit({0: got[0].offset + 1})  # only the first was processed
    await sub.stop()
    await sub.start()
    assert [m.value for m in await sub.poll(0.1)] == [b"two", b"three"]


async def test_poll_wakes_on_publish():
    bus = MemoryBus()
    sub = bus.subscription("g")
    await sub.start()
    task = asyncio.create_task(sub.poll(5))
    await asyncio.sleep(0.01)
    await bus.publisher().publish([(b"k", b"v")])
    got = await asyncio.wait_for(task, 1)
    assert [m.value for m in got] == [b"v"]


async def test_poll_times_out_empty():
    bus = MemoryBus()
    sub = bus.subscription("g")
    await sub.start()
    assert await sub.poll(0.05) == []


async def test_a_new_group_with_since_starts_at_the_recent_messages(monkeypatch):
    import atas.common.bus as bus_module

    bus = MemoryBus()
    keeper = bus.subscription("keeper", from_beginning=True)  # holds the log: nobody has committed
    await keeper.start()
    now = 1_800_000_000.0
    monkeypatch.setattr(bus_module.time, "time", lambda: now)
    await bus.publisher().publish([(b"k", b"old")])
    now += 7200
    await bus.publisher().publish([(b"k", b"recent")])

    late = bus.subscription("late", since_s=3600)
    await late.start()
    assert [m.value for m in await late.poll(0.1)] == [b"recent"]
    nothing_recent = bus.subscription("later", since_s=60)
    now += 3600
    await nothing_recent.start()
    assert await nothing_recent.poll(0.05) == []                # starts at the end ...
    await bus.publisher().publish([(b"k", b"next")])
    assert [m.value for m in await nothing_recent.poll(0.1)] == [b"next"]  # ... and misses nothing after
