"""The SSE writer around a Pub/Sub loss and a racing tail read: it must neither freeze the process
nor let a later client skip an event. Real Hub, Client, Session and the in-process history; the
Pub/Sub seam is a switch (its Redis side is covered by tests/integration/stream)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from types import SimpleNamespace

from atas.common.events import encode_event, new_event
from atas.stream.config import StreamConfig
from atas.stream.fanout import Client, Hub
from atas.stream.history import Event, MemoryHistory
from atas.stream.routes import Session
from atas.stream.sse import END_SHUTDOWN


def _payload(seq: int) -> bytes:
    return encode_event(new_event("results.recorded", project="p", execution_id="e", seq=seq, data={},
                                  occurred_at=datetime.now(timezone.utc)))


class _PubSub:
    """The fan-out seam: whether the project's channel is subscribed right now."""

    def __init__(self, active: bool = True):
        self.up = active

    def active(self, project: str) -> bool:
        return self.up

    def unwatch(self, project: str) -> None:
        pass


class _Transport:
    def __init__(self):
        self.data = bytearray()

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.data += data


class _Response:
    def __init__(self, transport: _Transport):
        self.transport = transport

    async def write(self, data: bytes) -> None:
        self.transport.write(data)


def _session(hub: Hub, pubsub: _PubSub, history: MemoryHistory, client: Client) -> Session:
    session = Session.__new__(Session)  # what run() sets up around an HTTP request
    transport = _Transport()
    session.state = SimpleNamespace(hub=hub, fanout=pubsub, history=history, config=StreamConfig())
    session.cfg = session.state.config
    session.request = SimpleNamespace(transport=transport)
    session.client = client
    session.resumed = True
    session.sent = client.cursor
    session.resp = _Response(transport)
    session.chunked = False
    session.transport = transport
    return session


async def test_events_held_for_a_catch_up_do_not_spin_the_event_loop_while_pubsub_is_down():
    history = MemoryHistory(max_len=100)
    first, second = await history.append([("p", "e1", _payload(1)), ("p", "e2", _payload(2))])
    hub, pubsub = Hub(), _PubSub()
    hub.fanout = pubsub
    client = Client("p", execution=None, types=None, limit=100, cursor=first)
    hub.add(client)
    session = _session(hub, pubsub, history, client)
    (event,) = (await history.read_after("p", first, 10)).events
    client.queue.append(event)  # a live event the writer has not written yet ...
    pubsub.up = False           # ... when Pub/Sub is lost
    hub.on_lost()

    turns = 0

    def count_turns():
        nonlocal turns
        turns += 1
        asyncio.get_running_loop().call_soon(count_turns)

    asyncio.get_running_loop().call_soon(count_turns)
    rounds, drain = 0, session._drain

    def guarded_drain():  # a spinning writer never yields: fail it instead of hanging the suite
        nonlocal rounds
        rounds += 1
        if rounds > 10_000 and turns < 2:
            raise RuntimeError(f"the writer went round {rounds} times without yielding")
        return drain()

    session._drain = guarded_drain
    writer = asyncio.create_task(session._loop())
    await asyncio.sleep(0.1)
    assert turns > 10, "the writer held the event loop"
    assert client.waiter is not None and client.queue  # parked, the event kept for the catch-up

    # Pub/Sub back: the writer catches up and the held event goes out once.
    pubsub.up = True
    hub.on_active("p")
    for _ in range(100):
        await asyncio.sleep(0.01)
        if client.cursor == second:
            break
    client.end(END_SHUTDOWN)
    await asyncio.wait_for(writer, 5)
    assert bytes(session.transport.data).count(b"event: results.recorded") == 1
    assert client.cursor == second


async def test_a_tail_read_that_raced_with_a_delivery_does_not_set_the_tail_back():
    history = MemoryHistory(max_len=100)
    (old,) = await history.append([("p", "e1", _payload(1))])
    hub, pubsub = Hub(), _PubSub()
    hub.fanout = pubsub
    epoch = hub.epoch
    # A client's tail read returned `old`; before it resumes, Pub/Sub delivers a newer event.
    (new,) = await history.append([("p", "e2", _payload(2))])
    hub.deliver("p", (await history.read_after("p", old, 10)).events)
    hub.learn_tail("p", old, epoch, True)
    assert hub.tails["p"] == new

    # So a client resuming from `old` reads the history instead of taking the shortcut, and gets e2.
    client = Client("p", execution=None, types=None, limit=100, cursor=old)
    hub.add(client)
    session = _session(hub, pubsub, history, client)
    await session._catch_up()
    assert b"event: results.recorded" in bytes(session.transport.data)
    assert client.cursor == new


async def test_a_shared_tail_read_from_before_a_pubsub_loss_is_not_trusted_after_it():
    history = MemoryHistory(max_len=100)
    await history.append([("p", "e1", _payload(1))])
    hub, pubsub = Hub(), _PubSub()
    hub.fanout = pubsub
    entered, release = asyncio.Event(), asyncio.Event()
    real_tail = history.tail

    async def slow_tail(project):
        entered.set()
        await release.wait()
        return await real_tail(project)

    history.tail = slow_tail
    early = _session(hub, pubsub, history, Client("p", execution=None, types=None, limit=100, cursor=None))
    started = asyncio.create_task(early._tail())
    await entered.wait()
    hub.on_lost()          # Pub/Sub drops and comes back while the read is in flight
    late = _session(hub, pubsub, history, Client("p", execution=None, types=None, limit=100, cursor=None))
    joined = asyncio.create_task(late._tail())  # shares the read started before the loss
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(started, joined)
    assert "p" not in hub.tails  # nobody vouches that live delivery covers what follows it


async def test_an_event_delivered_without_a_position_goes_out_once_then_only_its_id():
    """Redis down: the pod's bridge hands an event to its clients without a position. When it comes
    back with one, the client gets only the `id:`; a late position-less copy of an event already
    delivered with a position (a history write that ran but reported failure) is dropped."""
    history = MemoryHistory(max_len=100)
    first, second = await history.append([("p", "e1", _payload(1)), ("p", "e2", _payload(2))])
    hub, pubsub = Hub(), _PubSub()
    hub.fanout = pubsub
    client = Client("p", execution=None, types=None, limit=100, cursor=first)
    client.needs_sync = False
    hub.add(client)
    session = _session(hub, pubsub, history, client)
    (positioned,) = (await history.read_after("p", first, 10)).events

    async def delivered(event) -> bytes:
        hub.deliver("p", [event])
        await asyncio.sleep(0.01)  # the hub's fan-out round
        return b"".join(session._drain())

    local = Event(None, positioned.payload)
    assert b"event: results.recorded" in await delivered(local)
    assert client.unpositioned == {positioned.event_id}
    assert await delivered(positioned) == f"id: {second[0]}-{second[1]}\n\n".encode()
    assert not client.unpositioned  # forgotten once matched: the client is back on the fast path
    assert await delivered(Event(None, positioned.payload)) == b""
    assert client.cursor == second
