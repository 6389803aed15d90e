"""Fan-out: from the history's publications to the SSE clients of this process.

:class:`Hub` keeps the local clients by project and hands each event to the clients whose filters
match, as one shared pre-rendered frame appended to a bounded per-client queue (never an await, so
a slow client cannot delay the others). Where events come from is the engine behind the seam:

* :class:`RedisFanout` — one Redis Pub/Sub connection per process, subscribed to a project's
  channel only while a local client needs it. It speaks RESP itself on a plain socket, so a lost
  connection is *noticed* (a client library that silently reconnects and resubscribes would hide
  the messages published in between); after a loss every client catches up from history.
* :class:`MemoryFanout` — ``atas dev``: :class:`~atas.stream.history.MemoryHistory` publishes
  straight into the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import msgspec

from atas.common.config import RedisSettings
from atas.common.heartbeat import NO_BEAT, Heartbeat, idle
from atas.common.logging import get_logger
from atas.common.redis import ssl_context

from . import metrics
from .history import ZERO, Event, Pos
from .sse import END_SLOW, id_frame

log = get_logger(__name__)

_SENT_DIRECT = [0]  # events written directly, counted in a plain int, published once per slice


class Sink(Protocol):
    """The writer side of a client, as the fan-out uses it (implemented by the SSE session)."""

    transport: asyncio.Transport | None
    chunked: bool  # HTTP/1.1 chunked body: frames are wrapped in chunks
    sent: Pos | None

    def write_now(self, events: list[Event]) -> bool:
        """Write events now when that keeps order and cannot block; False: queue them instead."""


def _matches(event: Event, execution: str | None, types: frozenset[str] | None) -> bool:
    return ((execution is None or event.execution_id == execution)
            and (types is None or event.type in types))


def _filter(events: list[Event], execution: str | None,
            types: frozenset[str] | None) -> tuple[list[Event], Pos | None]:
    """The events a filter lets through, and the newest position it drops (None: none)."""
    if execution is None and types is None:
        return events, None
    matched, skipped = [], None
    for e in events:
        if _matches(e, execution, types):
            matched.append(e)
        elif e.pos is not None:
            skipped = e.pos
    return matched, skipped


class Client:
    """One SSE stream's state: filters, bounded queue, resume cursor.

    ``cursor`` is the newest position the client has (or may skip: filtered out); it is what the
    client's ``Last-Event-ID`` would resume from. ``needs_sync`` means live delivery may have a
    hole (just connected, or Pub/Sub was lost) and the writer must catch up from history first.
    """

    __slots__ = ("project", "execution", "types", "queue", "waiter", "limit", "cursor", "filtered",
                 "needs_sync", "syncing", "ended", "unpositioned", "_unpos_order", "last_write", "expires_at",
                 "sink", "fed")

    def __init__(self, project: str, *, execution: str | None, types: frozenset[str] | None,
                 limit: int, cursor: Pos | None):
        self.project = project
        self.execution = execution
        self.types = types
        self.queue: deque[Event] = deque()
        # The writer parks on this future; events, the end and the hub's ticker resolve it. (A bare
        # future instead of asyncio.Event + wait_for: no task and no timer per wait, which is what
        # makes thousands of clients per process affordable.)
        self.waiter: asyncio.Future | None = None
        self.last_write = time.monotonic()
        self.expires_at: float | None = None  # epoch seconds (the token's exp)
        self.limit = limit
        self.cursor = cursor
        self.filtered: Pos = ZERO
        self.needs_sync = True
        self.syncing = False
        self.ended: str | None = None
        # Set by the writer once streaming: writes in-order events straight to the socket from the
        # fan-out (see :class:`Sink`); None before the headers went out and after the end.
        self.sink: Sink | None = None
        self.fed = 0  # sequence number (its project's feed) of the last live event offered to it
        # Event ids delivered without a position (Redis down): when the same events come back with
        # one, only the position is sent, not the event again (and the id is forgotten).
        self.unpositioned: set[str] = set()
        self._unpos_order: deque[str] = deque()

    def matches(self, event: Event) -> bool:
        return _matches(event, self.execution, self.types)

    def take(self, events: list[Event]) -> None:
        """Events that passed this client's filters: written now when possible, else queued."""
        if not self.queue and self.sink is not None and self.sink.write_now(events):
            _SENT_DIRECT[0] += len(events)
            return
        if len(self.queue) + len(events) > self.limit:
            self.end(END_SLOW)
            return
        self.queue.extend(events)
        self.wake()

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self.queue.clear()
            self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def remember_unpositioned(self, event_id: str) -> None:
        _remember(self.unpositioned, self._unpos_order, event_id)

    def frame_of(self, event: Event) -> bytes:
        """What to write for a positioned event: the event, or only its ``id:`` when it went out
        before without a position. Call once per event and client (positions are deduplicated
        before), since it forgets the id it matched."""
        if self.unpositioned and event.event_id in self.unpositioned:
            self.unpositioned.discard(event.event_id)
            if not self.unpositioned:
                self._unpos_order.clear()  # and back on the hub's batched fast path
            return id_frame(event.pos)
        return event.frame


# Events a pod's bridge holds unwritten while Redis is down (it stops consuming beyond this) — and so
# delivers to its own clients without a position; what a client and the hub remember about such
# deliveries is bounded by a multiple of it, so nothing delivered during one outage is forgotten.
MAX_LOCAL_PENDING = 10_000
_REMEMBERED = 2 * MAX_LOCAL_PENDING


def _remember(ids: set[str], order: deque[str], event_id: str) -> None:
    """Add ``event_id`` to ``ids``, which keeps the newest ``_REMEMBERED`` (``order``: their age;
    it may still list ids discarded since, which then pop as no-ops)."""
    ids.add(event_id)
    order.append(event_id)
    if len(order) > _REMEMBERED:
        ids.discard(order.popleft())


class Fanout(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def watch(self, project: str) -> bool:
        """Ensure the project's events reach this process; True once live delivery is active."""
    def unwatch(self, project: str) -> None: ...
    def active(self, project: str) -> bool: ...


class _Group:
    """A feed's pending events as one filter sees them, frames joined once for all its clients."""

    __slots__ = ("events", "skipped", "first", "last", "plain", "chunked")

    def __init__(self, events: list[Event], execution: str | None, types: frozenset[str] | None):
        self.events, self.skipped = _filter(events, execution, types)
        # Direct writes need every event positioned (Redis up); the rest goes the generic way.
        self.plain: bytes | None = None
        self.chunked = b""
        if self.events and all(e.pos is not None for e in self.events):
            self.first, self.last = self.events[0].pos, self.events[-1].pos
            self.plain = b"".join(e.frame for e in self.events)
            self.chunked = b"%x\r\n%s\r\n" % (len(self.plain), self.plain)


class _Feed:
    """One project's live events on their way to its clients, in rounds over the clients.

    A round offers each client, in one write, every pending event it has not been offered yet
    (by sequence number, ``Client.fed``). Events arriving during a round are picked up by the
    clients the round has not reached yet — together with the others, in the same write — and
    a further round brings the rest up to date. So under load a client gets one write per round,
    not one per event: the work follows the rounds, not the event rate.
    """

    __slots__ = ("project", "seq", "events", "first_seq", "clients", "index", "round_last", "groups")

    def __init__(self, project: str):
        self.project = project
        self.seq = 0  # numbers the project's live events in this process
        self.events: list[Event] = []
        self.first_seq = 1  # sequence number of events[0]
        self.clients: list[Client] = []  # this round's clients (those of the project at its start)
        self.index = 0
        self.round_last = 0  # the newest sequence number when the round started
        self.groups: dict[tuple, _Group] = {}

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.events) - 1

    def group(self, client: Client) -> _Group | None:
        """The events after ``client.fed`` as the client's filter sees them (shared per start and
        filter); None when it has them all."""
        start = client.fed + 1 - self.first_seq
        if start >= len(self.events):
            return None
        if start < 0:
            start = 0
        key = (start, client.execution, client.types)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group(self.events[start:], client.execution, client.types)
        return g


class Hub:
    """The clients of this process, by project."""

    # The fan-out runs in slices of at most this long, then lets the event loop run (the bridge,
    # accepts, Pub/Sub, probes): a socket write costs ~15 µs, so one event to 10,000 clients would
    # otherwise hold the loop for 150 ms.
    SLICE_S = 0.001
    CHUNK = 64  # clients decided, then written, at a time

    def __init__(self) -> None:
        self.clients: dict[str, set[Client]] = {}
        self.count = 0
        self.draining = False
        self.fanout: Fanout | None = None
        # Per project, a position after which every event is known to reach this hub live (the
        # newest one delivered, or the history's tail read while subscribed). A client at that
        # position needs no history read at all: a connect storm costs Redis nothing.
        self.tails: dict[str, Pos] = {}
        self.epoch = 0  # bumped when live delivery may have had a hole (Pub/Sub lost)
        # Ids of the latest events delivered with a position: a copy of one arriving without a
        # position is dropped (a history write that ran, published, and still reported failure).
        self._positioned_ids: set[str] = set()
        self._positioned_order: deque[str] = deque()
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._feeds: dict[str, _Feed] = {}  # per project with local clients (or a round running)
        self._rounds: deque[_Feed] = deque()  # feeds with a round to run, oldest first
        self._pump_handle: asyncio.Handle | None = None

    def deliver(self, project: str, events: list[Event]) -> None:
        """Hand events of one project, in order, to its local clients.

        Events arriving while the fan-out is still busy join the pending ones, so a client the
        fan-out has not reached yet gets them all in one write: a backlog costs fewer writes per
        event instead of growing (see :class:`_Feed`).
        """
        last = events[-1].pos
        if last is None:
            events = [e for e in events if e.event_id not in self._positioned_ids]
            if not events:
                return
        else:
            for e in events:
                _remember(self._positioned_ids, self._positioned_order, e.event_id)
        if last is not None and self.fanout is not None and self.fanout.active(project):
            # Subscribed: every event after the newest delivered one arrives here live. Kept even
            # before any tail read, so a read that raced with this delivery cannot set it back.
            self.tails[project] = max(last, self.tails.get(project, last))
        feed = self._feeds.get(project)
        if feed is None or project not in self.clients:
            return
        if not feed.events:
            feed.first_seq = feed.seq + 1
        feed.seq += len(events)
        feed.events.extend(events)
        feed.groups.clear()
        if feed not in self._rounds:  # else the running round and its follow-up take them
            self._start_round(feed)
        if self._pump_handle is None:
            self._pump()

    def _start_round(self, feed: _Feed) -> None:
        # Every client of the previous round was offered the events it started with, and clients
        # that connected since start after them (Client.fed): those can go.
        drop = feed.round_last - feed.first_seq + 1
        if drop > 0:
            del feed.events[:drop]
            feed.first_seq += drop
            feed.groups.clear()
        clients = list(self.clients.get(feed.project, ()))
        if len(clients) > 1:
            # Each round starts at a random client. A set's order is fixed (by memory address), so
            # otherwise the same clients would always be served first and the same ones last: at
            # 2,000 clients, tens of milliseconds later on every event.
            k = random.randrange(len(clients))
            clients = clients[k:] + clients[:k]
        feed.clients = clients
        feed.index = 0
        feed.round_last = feed.last_seq
        self._rounds.append(feed)

    def _pump(self) -> None:
        """Run rounds until the slice is used up; continue on a later turn of the event loop."""
        self._pump_handle = None
        start = time.perf_counter()
        rounds = self._rounds
        while rounds:
            feed = rounds[0]
            n = len(feed.clients)
            while feed.index < n:
                hi = min(n, feed.index + self.CHUNK)
                self._offer(feed, feed.clients[feed.index:hi])
                feed.index = hi
                if time.perf_counter() - start > self.SLICE_S:
                    break
            else:
                rounds.popleft()
                self._round_done(feed)
            if rounds and time.perf_counter() - start > self.SLICE_S:
                self._publish_sent()
                self._pump_handle = asyncio.get_running_loop().call_soon(self._pump)
                return
        self._publish_sent()

    def _round_done(self, feed: _Feed) -> None:
        # One sample per round and process: the oldest event the round delivered → its last write.
        oldest = feed.events[0] if feed.events else None
        if oldest is not None:
            metrics.FANOUT_LATENCY.observe(max(0.0, time.time() - oldest.occurred_ts))
        if feed.last_seq > feed.round_last and feed.project in self.clients:
            self._start_round(feed)  # events came during the round: bring its early clients up to date
        else:
            feed.events.clear()
            feed.groups.clear()
            feed.clients = []
            feed.index = 0
            if feed.project not in self.clients:
                self._feeds.pop(feed.project, None)

    def _offer(self, feed: _Feed, clients: list[Client]) -> None:
        """Give a chunk of clients what they miss; most get it by one socket write, right here."""
        now = time.monotonic()
        last_seq = feed.last_seq
        sent = 0
        for c in clients:
            if c.ended is not None or c.fed >= last_seq:
                continue
            g = feed.group(c)
            c.fed = last_seq
            if g is None:
                continue
            if g.skipped is not None and g.skipped > c.filtered:
                c.filtered = g.skipped
            if not g.events:
                continue
            sink = c.sink
            # The common case: a caught-up client, every event new to it, nothing buffered. The
            # frames were joined once for every client at the same point with the same filter.
            if (g.plain is not None and sink is not None and not c.queue and not c.needs_sync
                    and not c.syncing and c.cursor is not None and c.cursor < g.first and not c.unpositioned):
                transport = sink.transport
                if transport is not None and not transport.get_write_buffer_size() and not transport.is_closing():
                    transport.write(g.chunked if sink.chunked else g.plain)
                    c.cursor = sink.sent = g.last
                    c.last_write = now
                    sent += len(g.events)
                    continue
            c.take(g.events)
        _SENT_DIRECT[0] += sent

    @staticmethod
    def _publish_sent() -> None:
        if _SENT_DIRECT[0]:  # counted in a plain int per client, published once per slice
            metrics.SENT_LIVE.inc(_SENT_DIRECT[0])
            _SENT_DIRECT[0] = 0

    def deliver_one(self, project: str, event: Event) -> None:
        self.deliver(project, [event])

    def learn_tail(self, project: str, pos: Pos, epoch: int, was_active: bool) -> None:
        """Record a tail read made while subscribed, unless live delivery was interrupted since."""
        if was_active and epoch == self.epoch and self.fanout is not None and self.fanout.active(project):
            self.tails[project] = max(pos, self.tails.get(project, pos))

    def forget(self, project: str) -> None:
        """No longer subscribed: events after the known tail would not arrive live."""
        self.tails.pop(project, None)

    async def single_flight(self, key: tuple, make):
        """Share one in-flight history read among every client asking the same thing at once
        (thousands reconnect together after a pod restart or a Pub/Sub outage)."""
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(make())
            self._inflight[key] = fut

            def done(f: asyncio.Future) -> None:
                self._inflight.pop(key, None)
                if not f.cancelled():
                    f.exception()  # retrieved: every waiter may have gone (a disconnect, shutdown)

            fut.add_done_callback(done)
        return await asyncio.shield(fut)

    def deliver_published(self, project: str, messages: list[bytes]) -> None:
        if project not in self.clients:
            return
        events = []
        for message in messages:
            try:
                events.append(Event.from_published(message))
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                log.error("unreadable publication dropped", project=project, error=str(exc))
        if events:
            self.deliver(project, events)

    def add(self, client: Client) -> None:
        """Count the client at once (the connection cap is exact), before any await."""
        self.clients.setdefault(client.project, set()).add(client)
        feed = self._feeds.get(client.project)
        if feed is None:
            feed = self._feeds[client.project] = _Feed(client.project)
        client.fed = feed.seq  # live events from here on (earlier ones: its cursor / history)
        self.count += 1
        metrics.OPEN.set(self.count)

    def remove(self, client: Client) -> None:
        group = self.clients.get(client.project)
        if group is None or client not in group:
            return
        group.discard(client)
        if not group:
            del self.clients[client.project]
            feed = self._feeds.get(client.project)
            if feed is not None and feed not in self._rounds:
                del self._feeds[client.project]
        self.count -= 1
        metrics.OPEN.set(self.count)
        if self.fanout is not None:
            self.fanout.unwatch(client.project)

    def on_active(self, project: str) -> None:
        for client in self.clients.get(project, ()):
            client.wake()

    def on_lost(self) -> None:
        """Pub/Sub is gone: whatever is published meanwhile must be caught up from history."""
        self.epoch += 1
        self.tails.clear()
        for group in self.clients.values():
            for client in group:
                client.needs_sync = True

    async def tick(self, heartbeat_s: float, beat: Heartbeat = NO_BEAT) -> None:
        """Wake writers that owe a heartbeat, whose token expired, or that wait to catch up.

        One loop for every client instead of a timer per client and wait.
        """
        interval = min(1.0, heartbeat_s / 2)
        while True:
            beat.beat()
            await asyncio.sleep(interval)
            await self.wake_due(heartbeat_s)

    async def wake_due(self, heartbeat_s: float) -> None:
        """One turn of :meth:`tick` (a coroutine so that the loop's step is one awaitable)."""
        now, wall = time.monotonic(), time.time()
        for group in self.clients.values():
            for c in group:
                if c.waiter is not None and (now - c.last_write >= heartbeat_s or c.needs_sync
                                             or (c.expires_at is not None and wall >= c.expires_at)):
                    c.wake()

    def all_clients(self) -> list[Client]:
        return [c for group in self.clients.values() for c in group]


class MemoryFanout:
    """In-process engine: the history calls ``hub.deliver_one`` itself; always live."""

    def __init__(self, hub: Hub):
        self._hub = hub

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def watch(self, project: str) -> bool:
        return True

    def unwatch(self, project: str) -> None:
        pass

    def active(self, project: str) -> bool:
        return True


# ------------------------------------------------------------------------------- Redis


class RespError(Exception):
    """Redis answered with an error reply."""


class _Incomplete(Exception):
    pass


def _parse(buf: bytes, pos: int):
    """One RESP2 value at ``buf[pos:]`` → (value, next position); raises _Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, pos = buf[pos:pos + 1], buf[pos + 1:end], end + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return buf[pos:pos + n], pos + n + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return RespError(line.decode(errors="replace")), pos
    raise RespError(f"unexpected reply type {kind!r}")


def parse_replies(buf: bytes) -> tuple[list, bytes]:
    """Every complete RESP2 reply in ``buf``, and the incomplete rest."""
    out, pos = [], 0
    while pos < len(buf):
        try:
            value, pos = _parse(buf, pos)
        except _Incomplete:
            break
        out.append(value)
    return out, buf[pos:]


class _PubSubProtocol(asyncio.Protocol):
    """The socket of the Pub/Sub connection: hands every complete reply of a read to the fan-out
    at once (a backlog is delivered in batches, not one message per wake-up)."""

    def __init__(self, on_replies: Callable[[list], None]):
        self._on_replies = on_replies
        self._rest = b""
        self.transport: asyncio.Transport | None = None
        self.last_rx = time.monotonic()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        replies, self._rest = parse_replies(self._rest + data if self._rest else data)
        if replies:
            try:
                self._on_replies(replies)
            except Exception as exc:  # noqa: BLE001 - a bad reply must not kill the event loop's callback
                self.transport.abort()
                if not self.closed.done():
                    self.closed.set_exception(exc)

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


def encode_command(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisFanout:
    """One Pub/Sub connection per process; SUBSCRIBE while a local client needs the project.

    Subscription state is tracked per channel: a SUBSCRIBE counts as active only once Redis
    confirmed it (and no newer SUBSCRIBE is in flight), which is what lets a resume "subscribe
    first, then read history" without a hole.
    """

    # A PING every this often; no reply at all within two intervals + timeout means the connection
    # is dead (a half-open TCP connection otherwise looks like a quiet channel forever).
    PING_INTERVAL_S = 5.0
    RECONNECT_MAX_S = 5.0
    STABLE_S = 10.0  # a connection that lived this long reconnects at once when lost

    def __init__(self, settings: RedisSettings, hub: Hub, *, channel_prefix: str, linger_s: float,
                 heartbeat: Heartbeat = NO_BEAT):
        self._heartbeat = heartbeat  # beaten per connection attempt and per answered PING
        self._settings = settings
        self._hub = hub
        self._prefix = channel_prefix
        self._linger_s = linger_s
        self._timeout = settings.timeout_ms / 1000
        self._refs: dict[str, int] = {}
        self._pong: asyncio.Future | None = None  # the handshake PING's answer, while it waits
        self._subscribed: set[str] = set()   # SUBSCRIBE sent on this connection, no UNSUBSCRIBE since
        self._pending: dict[str, int] = {}   # SUBSCRIBEs not yet confirmed
        self._active: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._conn: _PubSubProtocol | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self.connected = asyncio.Event()

    # -- public ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-pubsub")

    async def stop(self) -> None:
        self._stopping.set()
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def active(self, project: str) -> bool:
        return project in self._active

    async def watch(self, project: str) -> bool:
        self._refs[project] = self._refs.get(project, 0) + 1
        handle = self._lingering.pop(project, None)
        if handle is not None:
            handle.cancel()
        if project in self._active:
            return True
        if self._conn is None:
            return False  # down: the connection loop subscribes every watched project when it is back
        if project not in self._subscribed:
            self._send_subscribe([project])
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(project, []).append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self._timeout)
        except TimeoutError:
            return False

    def unwatch(self, project: str) -> None:
        refs = self._refs.get(project, 0) - 1
        if refs > 0:
            self._refs[project] = refs
            return
        self._refs.pop(project, None)
        if project not in self._lingering and not self._stopping.is_set():
            self._lingering[project] = asyncio.get_running_loop().call_later(
                self._linger_s, self._drop, project)

    # -- subscription bookkeeping -------------------------------------------------------------

    def _channel(self, project: str) -> str:
        return self._prefix + project

    def _send(self, data: bytes) -> None:
        assert self._conn is not None and self._conn.transport is not None
        self._conn.transport.write(data)

    def _send_subscribe(self, projects: list[str]) -> None:
        self._send(encode_command("SUBSCRIBE", *(self._channel(p) for p in projects)))
        for p in projects:
            self._subscribed.add(p)
            self._pending[p] = self._pending.get(p, 0) + 1

    def _drop(self, project: str) -> None:
        self._lingering.pop(project, None)
        if project in self._refs:
            return
        self._active.discard(project)
        self._hub.forget(project)
        if project in self._subscribed and self._conn is not None:
            self._subscribed.discard(project)
            self._send(encode_command("UNSUBSCRIBE", self._channel(project)))
        metrics.SUBSCRIBED.set(len(self._active))

    def _confirmed(self, project: str) -> None:
        left = self._pending.get(project, 0) - 1
        if left > 0:
            self._pending[project] = left
            return
        self._pending.pop(project, None)
        if project in self._subscribed:
            self._active.add(project)
            metrics.SUBSCRIBED.set(len(self._active))
            for fut in self._waiters.pop(project, []):
                if not fut.done():
                    fut.set_result(True)
            self._hub.on_active(project)

    # -- connection ---------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        down_logged = False
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            self._heartbeat.beat()
            conn: _PubSubProtocol | None = None
            pinger = None
            up_since: float | None = None
            try:
                tls = ssl_context(self._settings)
                _transport, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: _PubSubProtocol(self._on_replies),
                                           self._settings.host, self._settings.port, ssl=tls,
                                           server_hostname=self._settings.host if tls else None),
                    self._timeout)
                self._conn = conn
                await self._handshake(conn)
                up_since = time.monotonic()
                wanted = list(self._refs)
                if wanted:
                    self._send_subscribe(wanted)
                self.connected.set()
                metrics.PUBSUB_UP.set(1)
                log.info("pubsub connected", projects=len(wanted), recovered=down_logged)
                down_logged = False
                pinger = asyncio.create_task(self._ping(conn))
                exc = await conn.closed
                raise ConnectionError(f"connection closed: {exc or 'by Redis'}")
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, RespError, ValueError) as exc:
                if not down_logged:
                    log.warning("pubsub connection lost; local clients will catch up from history "
                                "when it is back", error=f"{type(exc).__name__}: {exc}")
                    down_logged = True
            except Exception:  # noqa: BLE001 - a bug must not end live delivery for good: reconnect
                log.exception("pubsub connection failed unexpectedly; reconnecting")
                down_logged = True
            finally:
                if pinger is not None:
                    pinger.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pinger
                self._lost()
                if conn is not None and conn.transport is not None:
                    conn.transport.abort()
            if up_since is not None and time.monotonic() - up_since >= self.STABLE_S:
                backoff = 0.1  # a working connection was lost: reconnect at once
            # else (refused, or dropped right after: wrong password, no permission for the
            # channels) back off exponentially instead of reconnecting in a loop
            await idle(self._heartbeat, backoff, self._stopping)
            backoff = min(backoff * 2, self.RECONNECT_MAX_S)

    async def _handshake(self, conn: _PubSubProtocol) -> None:
        """AUTH (when configured) and PING, answered before the connection counts as up: an error
        reply (wrong password, unknown ACL user) raises here."""
        pong = asyncio.get_running_loop().create_future()
        self._pong = pong
        try:
            if self._settings.password:
                credentials = [self._settings.password]
                if self._settings.username:
                    credentials.insert(0, self._settings.username)
                self._send(encode_command("AUTH", *credentials))
            self._send(encode_command("PING"))
            async with asyncio.timeout(self._timeout):
                await asyncio.wait({pong, conn.closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pong = None
        if not pong.done():  # closed first: by an error reply (AUTH refused), or by Redis
            raise (conn.closed.exception() or ConnectionError("closed by Redis during AUTH/PING"))

    def _lost(self) -> None:
        was_connected = self._conn is not None
        self._conn = None
        self.connected.clear()
        self._subscribed.clear()
        self._pending.clear()
        self._active.clear()
        metrics.PUBSUB_UP.set(0)
        metrics.SUBSCRIBED.set(0)
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(False)
        self._waiters.clear()
        if was_connected:
            self._hub.on_lost()

    def _on_replies(self, replies: list) -> None:
        """Messages go to the hub in per-project batches; confirmations keep their place in order."""
        plen = len(self._prefix)
        batch: dict[str, list[bytes]] = {}
        for reply in replies:
            if isinstance(reply, list) and reply and reply[0] == b"message":
                batch.setdefault(reply[1][plen:].decode(), []).append(reply[2])
                continue
            self._flush(batch)
            if isinstance(reply, RespError):
                raise reply
            if reply == b"PONG" and self._pong is not None and not self._pong.done():
                self._pong.set_result(None)  # the handshake's PING (before any SUBSCRIBE)
                continue
            if isinstance(reply, list) and reply and reply[0] == b"subscribe":
                self._confirmed(reply[1][plen:].decode())
        self._flush(batch)

    def _flush(self, batch: dict[str, list[bytes]]) -> None:
        for project, messages in batch.items():
            self._hub.deliver_published(project, messages)
        batch.clear()

    async def _ping(self, conn: _PubSubProtocol) -> None:
        dead_after = 2 * self.PING_INTERVAL_S + self._timeout
        while True:
            await asyncio.sleep(self.PING_INTERVAL_S)
            if time.monotonic() - conn.last_rx > dead_after:
                conn.transport.abort()  # half-open: nothing came back, not even PONGs
                return
            self._heartbeat.beat()  # connected, and Redis answered within the bound
            self._send(encode_command("PING"))
