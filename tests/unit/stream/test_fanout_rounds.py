"""The hub's fan-out rounds on real loopback sockets: events that arrive while a fan-out is under
way reach every client once and in order, the clients not reached yet get them in one write, and
no client is always served last."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timezone

from atas.common.events import encode_event, new_event
from atas.stream.fanout import Client, Hub
from atas.stream.history import Event


class _Server(asyncio.Protocol):
    transports: list = []

    def connection_made(self, transport):
        self.transports.append(transport)


class _Sink:
    """The writer side the hub needs (the SSE session in the service), over a real transport;
    ``on_write`` is called before each write the hub makes."""

    def __init__(self, transport, on_write=None):
        self.transport = transport
        self.chunked = False
        self.sent = None
        self.writes = 0
        real = transport.write

        def counting(data):
            self.writes += 1
            if on_write is not None:
                on_write()
            real(data)
        transport.write = counting

    def write_now(self, events):
        return False


@contextlib.asynccontextmanager
async def _hub_with_clients(n: int, *, limit: int = 100, on_write=None):
    """A hub with ``n`` caught-up clients on real loopback connections: yields the hub, the sinks
    and the client ends' readers; closes everything after. ``on_write(i)`` sees client i's writes."""
    loop = asyncio.get_running_loop()
    _Server.transports = []
    server = await loop.create_server(_Server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]  # keep the writers:
    try:                                                                             # dropping one closes it
        while len(_Server.transports) < n:
            await asyncio.sleep(0.01)
        hub, sinks = Hub(), []
        for i, transport in enumerate(_Server.transports):
            client = Client("p", execution=None, types=None, limit=limit, cursor=(0, 0))
            client.needs_sync = False
            hub.add(client)
            client.sink = _Sink(transport, None if on_write is None else (lambda i=i: on_write(i)))
            sinks.append(client.sink)
        yield hub, sinks, [reader for reader, _writer in conns]
    finally:
        for _reader, writer in conns:
            writer.close()
        for t in _Server.transports:
            t.close()
        server.close()


async def _rounds_done(hub: Hub) -> None:
    async with asyncio.timeout(10):
        while hub._rounds:
            await asyncio.sleep(0)


def _event(pos: int) -> Event:
    env = new_event("results.recorded", project="p", execution_id="e", seq=pos, data={"n": pos},
                    occurred_at=datetime.now(timezone.utc))
    return Event((pos, 0), encode_event(env))


async def test_events_arriving_mid_fan_out_reach_everyone_once_in_order_with_fewer_writes():
    n = 300
    async with _hub_with_clients(n) as (hub, sinks, readers):
        hub.SLICE_S = 0  # yield after every chunk, so that events arrive while a round is under way
        hub.deliver("p", [_event(1)])  # the first chunk is written at once, the rest later
        assert hub._rounds, "the round should still be under way"
        hub.deliver("p", [_event(2)])
        hub.deliver("p", [_event(3)])
        await _rounds_done(hub)
        for reader in readers:
            data = b""
            async with asyncio.timeout(10):
                while data.count(b"\n\n") < 3:
                    chunk = await reader.read(65536)
                    assert chunk, f"stream closed after {data!r}"
                    data += chunk
            blocks = [b for b in data.split(b"\n\n") if b]
            got = [json.loads(b.split(b"data: ", 1)[1])["data"]["n"] for b in blocks]
            assert got == [1, 2, 3]
        writes = sum(s.writes for s in sinks)
        # One write per client per round: 3 events, but the clients the first round had not reached
        # took all three at once, and those it had reached took 2 and 3 together.
        assert n < writes < 2 * n, writes


async def test_no_client_is_always_served_last():
    """Rounds start at a random client: over many events, every client is sometimes early."""
    n, events = 40, 60
    order: list[int] = []  # client numbers in the order their writes happened
    async with _hub_with_clients(n, limit=1000, on_write=order.append) as (hub, _sinks, _readers):
        positions: dict[int, list[int]] = {i: [] for i in range(n)}
        for pos in range(1, events + 1):
            order.clear()
            hub.deliver("p", [_event(pos)])
            await _rounds_done(hub)
            assert sorted(order) == list(range(n))  # everyone, once
            for rank, i in enumerate(order):
                positions[i].append(rank)
        # With a fixed order each client would hold one rank throughout; here every client is in
        # the first half for some events and in the second half for others.
        for i, ranks in positions.items():
            assert min(ranks) < n // 2 <= max(ranks), (i, ranks)
