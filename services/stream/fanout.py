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
        self.sink: Callable[[Event], bool] | None = None
        # Event ids delivered without a position (Redis down): when the same events come back from
        # history, only their position is sent, not the event again.
        self.unpositioned: set[str] = set()
        self._unpos_order: deque[str] = deque()

    def matches(self, event: Event) -> bool:
        return ((self.execution is None or event.execution_id == self.execution)
                and (self.types is None or event.type in self.types))

    def offer(self, event: Event) -> None:
        if self.ended is not None:
            return
        if not self.matches(event):
            if event.pos is not None and event.pos > self.filtered:
                self.filtered = event.pos
            return
        if not self.queue and self.sink is not None and self.sink(event):
            _SENT_DIRECT[0] += 1
            return
        if len(self.queue) >= self.limit:
            self.end(END_SLOW)
            return
        self.queue.append(event)
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

    def deliver(self, project: str, event: Event) -> None:
        if event.pos is not None and project in self.tails and event.pos > self.tails[project]:
            self.tails[project] = event.pos
        group = self.clients.get(project)
        if not group:
            return
        for client in group:
            client.offer(event)
        if _SENT_DIRECT[0]:  # counted in a plain int per client, published once per event
            metrics.SENT_LIVE.inc(_SENT_DIRECT[0])
            _SENT_DIRECT[0] = 0
        # One sample per event and process: when the last direct write of it was done.
        metrics.FANOUT_LATENCY.observe(max(0.0, time.time() - event.occurred_ts))

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

    def deliver_published(self, project: str, message: bytes) -> None:
        if project not in self.clients:
            return
        try:
            event = Event.from_published(message)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            log.error("unreadable publication dropped", project=project, error=str(exc))
            return
        self.deliver(project, event)

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
    """In-process engine: the history calls ``hub.deliver`` itself; always live."""

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


async def read_reply(reader: asyncio.StreamReader):
    """One RESP2 reply (what a subscribed connection receives: arrays, bulk strings, integers)."""
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [await read_reply(reader) for _ in range(n)]
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        return (await reader.readexactly(n + 2))[:-2]
    if kind == b":":
        return int(rest)
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RespError(rest.decode(errors="replace"))
    raise RespError(f"unexpected reply type {kind!r}")


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
        self._writer: asyncio.StreamWriter | None = None
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
        if self._writer is None:
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
        assert self._writer is not None
        self._writer.write(data)

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
        if project in self._subscribed and self._writer is not None:
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
        while not self._stopping.is_set():
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self._settings.host, self._settings.port), self._timeout)
                if self._settings.password:
                    writer.write(encode_command("AUTH", self._settings.password))
                    await asyncio.wait_for(read_reply(reader), self._timeout)
                self._writer = writer
                wanted = list(self._refs)
                if wanted:
                    self._send_subscribe(wanted)
                self.connected.set()
                metrics.PUBSUB_UP.set(1)
                log.info("pubsub connected", projects=len(wanted), recovered=down_logged)
                down_logged = False
                backoff = 0.1
                await self._read_loop(reader, writer)
                raise ConnectionError("connection closed by Redis")
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, RespError, asyncio.IncompleteReadError, ValueError) as exc:
                if not down_logged:
                    log.warning("pubsub connection lost; local clients will catch up from history "
                                "when it is back", error=f"{type(exc).__name__}: {exc}")
                    down_logged = True
            finally:
                self._lost()
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self.RECONNECT_MAX_S)

    def _lost(self) -> None:
        was_connected = self._writer is not None
        self._writer = None
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

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pinger = asyncio.create_task(self._ping(writer))
        plen = len(self._prefix)
        try:
            while True:
                reply = await asyncio.wait_for(read_reply(reader), 2 * self.PING_INTERVAL_S + self._timeout)
                if not isinstance(reply, list) or not reply:
                    continue
                kind = reply[0]
                if kind == b"message":
                    self._hub.deliver_published(reply[1][plen:].decode(), reply[2])
                elif kind == b"subscribe":
                    self._confirmed(reply[1][plen:].decode())
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(self.PING_INTERVAL_S)
            writer.write(encode_command("PING"))
