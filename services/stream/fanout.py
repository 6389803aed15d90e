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
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import msgspec

from atas.common.config import RedisSettings
from atas.common.logging import get_logger

from . import metrics
from .history import ZERO, Event, Pos
from .sse import END_SLOW

log = get_logger(__name__)

_SENT_DIRECT = [0]  # direct writes of the event being delivered, published once per event


class Client:
    """One SSE stream's state: filters, bounded queue, resume cursor.

    ``cursor`` is the newest position the client has (or may skip: filtered out); it is what the
    client's ``Last-Event-ID`` would resume from. ``needs_sync`` means live delivery may have a
    hole (just connected, or Pub/Sub was lost) and the writer must catch up from history first.
    """

    __slots__ = ("project", "execution", "types", "queue", "waiter", "limit", "cursor", "filtered",
                 "needs_sync", "syncing", "ended", "unpositioned", "_unpos_order", "last_write", "expires_at",
                 "sink")

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
        # Set by the writer once streaming: writes an in-order event straight to the socket from the
        # fan-out loop (True) or declines (False: it is queued for the writer task instead).
        self.sink: Callable[[list[Event]], bool] | None = None
        # Event ids delivered without a position (Redis down): when the same events come back from
        # history, only their position is sent, not the event again.
        self.unpositioned: set[str] = set()
        self._unpos_order: deque[str] = deque()

    def matches(self, event: Event) -> bool:
        return ((self.execution is None or event.execution_id == self.execution)
                and (self.types is None or event.type in self.types))

    def offer(self, events: list[Event]) -> None:
        """Take events of this client's project, in order (several when the fan-out is behind)."""
        if self.ended is not None:
            return
        if self.execution is not None or self.types is not None:
            matched = []
            for event in events:
                if self.matches(event):
                    matched.append(event)
                elif event.pos is not None and event.pos > self.filtered:
                    self.filtered = event.pos
            if not matched:
                return
            events = matched
        if not self.queue and self.sink is not None and self.sink(events):
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
        self.unpositioned.add(event_id)
        self._unpos_order.append(event_id)
        if len(self._unpos_order) > self.limit * 4:
            self.unpositioned.discard(self._unpos_order.popleft())


class Fanout(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def watch(self, project: str) -> bool:
        """Ensure the project's events reach this process; True once live delivery is active."""
    def unwatch(self, project: str) -> None: ...
    def active(self, project: str) -> bool: ...


class Hub:
    """The clients of this process, by project."""

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
        self._inflight: dict[tuple, asyncio.Future] = {}

    def deliver(self, project: str, events: list[Event]) -> None:
        """Hand events of one project, in order, to its local clients.

        Several events at once when the Pub/Sub reader is behind: each client then gets them in
        one socket write, so a backlog costs fewer writes per event instead of growing.
        """
        last = events[-1].pos
        if last is not None and project in self.tails and last > self.tails[project]:
            self.tails[project] = last
        group = self.clients.get(project)
        if not group:
            return
        for client in group:
            client.offer(events)
        if _SENT_DIRECT[0]:  # counted in a plain int per client, published once per call
            metrics.SENT_LIVE.inc(_SENT_DIRECT[0])
            _SENT_DIRECT[0] = 0
        # One sample per call and process: the oldest event's time to its last direct write.
        metrics.FANOUT_LATENCY.observe(max(0.0, time.time() - events[0].occurred_ts))

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
            fut.add_done_callback(lambda _f: self._inflight.pop(key, None))
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
        self.count += 1
        metrics.OPEN.set(self.count)

    def remove(self, client: Client) -> None:
        group = self.clients.get(client.project)
        if group is None or client not in group:
            return
        group.discard(client)
        if not group:
            del self.clients[client.project]
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

    async def tick(self, heartbeat_s: float) -> None:
        """Wake writers that owe a heartbeat, whose token expired, or that wait to catch up.

        One loop for every client instead of a timer per client and wait.
        """
        interval = min(1.0, heartbeat_s / 2)
        while True:
            await asyncio.sleep(interval)
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

    def __init__(self, settings: RedisSettings, hub: Hub, *, channel_prefix: str, linger_s: float):
        self._settings = settings
        self._hub = hub
        self._prefix = channel_prefix
        self._linger_s = linger_s
        self._timeout = settings.timeout_ms / 1000
        self._refs: dict[str, int] = {}
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
            conn: _PubSubProtocol | None = None
            pinger = None
            try:
                _transport, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: _PubSubProtocol(self._on_replies),
                                           self._settings.host, self._settings.port), self._timeout)
                self._conn = conn
                if self._settings.password:
                    self._send(encode_command("AUTH", self._settings.password))  # an error reply drops us
                wanted = list(self._refs)
                if wanted:
                    self._send_subscribe(wanted)
                self.connected.set()
                metrics.PUBSUB_UP.set(1)
                log.info("pubsub connected", projects=len(wanted), recovered=down_logged)
                down_logged = False
                backoff = 0.1
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
            finally:
                if pinger is not None:
                    pinger.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pinger
                self._lost()
                if conn is not None and conn.transport is not None:
                    conn.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self.RECONNECT_MAX_S)

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
            self._send(encode_command("PING"))
