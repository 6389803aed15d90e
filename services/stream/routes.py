"""``GET /v1/stream``: live events of one project as Server-Sent Events, with resume.

The writer of one stream (:class:`Session`) does, in a loop: catch up from history when live
delivery may have a hole (at connect, after a Pub/Sub outage), write what the fan-out queued,
send a heartbeat when idle, and end the stream — with a final ``event: end`` saying why — when the
client is too slow, its token expires or the process shuts down.

Resume without duplicates or holes: the client is registered (its project subscribed) *before* the
history is read; live events arriving meanwhile wait in its queue; the replay writes everything
after ``Last-Event-ID``; queued events at or before the last replayed position are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import uuid

import msgspec
from aiohttp import web

from atas.common.app import SETTINGS
from atas.common.auth import require, unauthorized
from atas.common.errors import ApiError, parse_query
from atas.common.events import EVENT_TYPES
from atas.common.schemas import ProjectKey
from atas.common.logging import get_logger

from . import metrics
from .fanout import Client
from .history import Event, Pos, parse_pos
from .sse import END_SLOW, END_TOKEN, HEARTBEAT, end_frame, id_frame, reset_frame, retry_frame
from .state import STREAM, StreamState

log = get_logger(__name__)

# Below this many buffered bytes a write cannot block (asyncio pauses writing at 64 KiB), so it
# needs no timeout; skipping the timer per write matters at thousands of clients.
_FAST_WRITE_BYTES = 32 * 1024

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    # no-transform: proxies must not compress or re-chunk (that would buffer events).
    "Cache-Control": "no-cache, no-transform",
    # nginx (and ingress-nginx) would otherwise buffer the response.
    "X-Accel-Buffering": "no",
}


class StreamQuery(msgspec.Struct):
    project: ProjectKey
    # A UUID, checked: a typo would otherwise match no event and stream nothing, forever.
    execution: uuid.UUID | None = None
    types: str | None = None
    last_event_id: str | None = None
    access_token: str | None = None


def _parse_types(raw: str | None) -> frozenset[str] | None:
    if raw is None or not raw.strip():
        return None
    types = frozenset(t.strip() for t in raw.split(",") if t.strip())
    unknown = sorted(types - set(EVENT_TYPES))
    if unknown:
        raise ApiError(400, "invalid_parameter",
                       f"unknown event type(s) {', '.join(unknown)} in query parameter `types`; "
                       f"valid: {', '.join(EVENT_TYPES)}", field="types")
    return types


def _unavailable(reason: str, message: str, retry_after: int) -> ApiError:
    metrics.REJECTED.labels(reason).inc()
    return ApiError(503, reason, message, headers={"Retry-After": str(retry_after)})


async def stream(request: web.Request) -> web.StreamResponse:
    state = request.app[STREAM]
    cfg = state.config
    query = parse_query(StreamQuery, request)
    types = _parse_types(query.types)
    principal = require(request, request.app[SETTINGS].jwt_secret, "stream:read", query.project,
                        allow_query=True)
    if principal.expires_at is not None and principal.expires_at <= time.time():
        # expires_at is the same deadline verify_token applies (exp + the skew allowance); this
        # only closes the gap of a token expiring between verification and here.
        raise unauthorized("token has expired; mint a new one")
    if state.hub.draining:
        raise _unavailable("draining", "this server is shutting down; retry on another", cfg.retry_after_s)
    if state.hub.count >= cfg.max_connections:
        raise _unavailable("capacity", f"this server holds its maximum of {cfg.max_connections} streams",
                           cfg.retry_after_s)
    raw_last = request.headers.get("Last-Event-ID") or query.last_event_id
    resumed = bool(raw_last and raw_last.strip())
    execution = str(query.execution) if query.execution is not None else None
    client = Client(query.project, execution=execution, types=types, limit=cfg.client_queue,
                    cursor=parse_pos(raw_last) if resumed else None)
    session = Session(state, request, client, resumed=resumed, expires_at=principal.expires_at)
    return await session.run()


class Session:
    """The writer of one SSE stream."""

    def __init__(self, state: StreamState, request: web.Request, client: Client, *, resumed: bool,
                 expires_at: float | None):
        self.state = state
        self.cfg = state.config
        self.request = request
        self.client = client
        self.resumed = resumed
        self.sent: Pos | None = client.cursor if resumed else None  # the client's lastEventId
        self.resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
        # What the fan-out needs to write to this stream itself (see fanout.Sink).
        self.chunked = False
        self.transport: asyncio.Transport | None = None
        client.expires_at = expires_at

    async def run(self) -> web.StreamResponse:
        state, client = self.state, self.client
        state.hub.add(client)
        reason = "client"
        metrics.CONNECTS.labels("resume" if self.resumed else "fresh").inc()
        try:
            fanout = state.fanout
            assert fanout is not None, "stream service not started"
            # Subscribe first; the history is read only once live delivery is on (see module doc).
            await fanout.watch(client.project)
            if not self.resumed and fanout.active(client.project):
                try:
                    client.cursor = await self._tail()
                except Exception as exc:  # noqa: BLE001 - Redis down: the client gets a reset later
                    log.warning("history unavailable at connect", error=f"{type(exc).__name__}: {exc}")
            if self.request.version >= (1, 1):
                # Explicit, so that `chunked` is known: direct writes frame chunks themselves.
                self.resp.enable_chunked_encoding()
            await self.resp.prepare(self.request)
            await self._write(retry_frame(self.cfg.retry_ms) + b"\n")  # also flushes the headers
            self.chunked = self.resp.chunked
            self.transport = self.request.transport
            client.sink = self
            reason = await self._loop()
        except ConnectionError:  # the client went away (aiohttp raises several flavours)
            reason = "client"
        except TimeoutError:  # a write did not complete within write_timeout_s: a stalled client
            client.end(END_SLOW)
            reason = await self._finish(END_SLOW)
        finally:
            client.sink = None
            state.hub.remove(client)
            metrics.DISCONNECTS.labels(reason).inc()
        return self.resp

    async def _loop(self) -> str:
        client, fanout, cfg = self.client, self.state.fanout, self.cfg
        loop = asyncio.get_running_loop()
        while True:
            if client.ended is not None:
                return await self._finish(client.ended)
            if client.expires_at is not None and time.time() >= client.expires_at:
                client.end(END_TOKEN)
                continue
            if client.needs_sync and fanout.active(client.project):
                await self._sync()
            frames = self._drain()
            if frames:
                await self._write(b"".join(frames))
            elif time.monotonic() - client.last_write >= cfg.heartbeat_s:
                head = b""
                if client.cursor is not None and client.cursor != self.sent and not client.needs_sync:
                    head = id_frame(client.cursor)  # moves a filtered client's resume point along
                    self.sent = client.cursor
                await self._write(head + HEARTBEAT)
            if client.ended is not None or (client.queue and not client.needs_sync):
                continue
            # Park until an event, the end, or the hub's ticker (heartbeat due, token expiry, retry
            # of a catch-up) wakes us. Events held for a catch-up that cannot run yet (Pub/Sub
            # down, history unreadable) wait with us: going round again at once would spin the
            # event loop, and nothing but that loop can bring Pub/Sub back.
            client.waiter = loop.create_future()
            try:
                await client.waiter
            finally:
                client.waiter = None

    def write_now(self, events: list[Event]) -> bool:
        """Write live events from the fan-out itself, when that keeps order and cannot block.

        The hub's batched direct writes cover the common case (caught up, every event new, nothing
        buffered); this covers the rest that needs no task switch: events partly replayed already,
        resume points of events delivered during a Redis outage, a little data still buffered.
        Anything else (catching up, a backlog, a full buffer) goes through the queue.
        """
        client = self.client
        cursor = client.cursor
        if client.needs_sync or client.syncing or cursor is None:
            return False
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() > _FAST_WRITE_BYTES:
            return False
        for event in events:
            if event.pos is None:
                return False  # not from Pub/Sub: the queue path handles it
        frames = []
        for event in events:
            if event.pos <= cursor:
                continue  # already sent (replayed)
            cursor = event.pos
            frames.append(client.frame_of(event))
        if frames:
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            # The headers went out with the first write; from here on the body is ours to frame.
            transport.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
            client.cursor = self.sent = cursor
            client.last_write = time.monotonic()
        return True

    def _drain(self) -> list[bytes]:
        """Frames for what the fan-out queued, deduplicated against the cursor."""
        client = self.client
        queue = client.queue
        frames: list[bytes] = []
        cursor = client.cursor
        held = []
        while queue:
            event = queue.popleft()
            if event.pos is None:  # Redis down: delivered by this pod's bridge, no position yet
                if event.event_id not in client.unpositioned:
                    client.remember_unpositioned(event.event_id)
                    frames.append(event.frame)
                continue
            if client.needs_sync:
                held.append(event)  # there may be a hole before it: catch up first
                continue
            if cursor is not None and event.pos <= cursor:
                continue  # already replayed
            cursor = event.pos
            frames.append(client.frame_of(event))
            self.sent = cursor
        if held:
            queue.extend(held)
        elif cursor is not None and not client.needs_sync and client.filtered > cursor:
            cursor = client.filtered  # filtered-out events are "had" too: the resume point moves on
        client.cursor = cursor
        if frames:
            metrics.SENT_LIVE.inc(len(frames))
        return frames

    async def _sync(self) -> None:
        """Catch up from history after ``client.cursor``; reset when that is no longer possible."""
        client = self.client
        client.needs_sync = False
        client.syncing = True
        try:
            await self._catch_up()
        finally:
            client.syncing = False

    async def _catch_up(self) -> None:
        client, history = self.client, self.state.history
        counted = self.resumed or self.sent is not None
        if client.cursor is None:
            try:
                tail = await self._tail()
            except Exception:  # noqa: BLE001
                client.needs_sync = True
                return
            # Redis was down at connect, or Last-Event-ID was not a position: what happened
            # since is unknown.
            await self._reset(tail, "unknown_position")
            return
        cursor = client.cursor
        hub = self.state.hub
        if hub.tails.get(client.project) == cursor:
            # Live delivery covers everything after the cursor: nothing to read.
            if counted:
                metrics.RESUMES.labels("replayed").inc()
            if cursor != self.sent:
                self.sent = cursor
                await self._write(id_frame(cursor))
            return
        while True:
            try:
                page = await hub.single_flight(
                    ("after", client.project, cursor, self.cfg.replay_page),
                    lambda c=cursor: history.read_after(client.project, c, self.cfg.replay_page))
            except Exception as exc:  # noqa: BLE001 - Redis down again: retry on the next turn
                log.warning("history read failed; will retry", error=f"{type(exc).__name__}: {exc}")
                client.cursor = cursor
                client.needs_sync = True
                return
            if page.gap:
                await self._reset(page.last, "history_gap")
                return
            frames = []
            for event in page.events:
                if not client.matches(event):
                    continue
                frames.append(client.frame_of(event))
            if page.events:
                cursor = page.events[-1].pos
            if frames:
                client.cursor = cursor
                self.sent = cursor
                await self._write(b"".join(frames))
                metrics.SENT_REPLAY.inc(len(frames))
            if len(page.events) < self.cfg.replay_page:
                break
        client.cursor = cursor
        if counted:
            metrics.RESUMES.labels("replayed").inc()
        # Resume point: without it a quiet or filtered stream would reconnect from an old id.
        if client.cursor != self.sent:
            self.sent = client.cursor
            await self._write(id_frame(client.cursor))

    async def _tail(self) -> Pos:
        """The project's newest position: known from live delivery, else one shared Redis read."""
        hub, project = self.state.hub, self.client.project
        known = hub.tails.get(project)
        if known is not None:
            return known
        fanout, history = self.state.fanout, self.state.history

        async def read() -> tuple[Pos, int, bool]:
            # Whether live delivery was on is judged when the read starts, for every client that
            # shares it: one joining after a Pub/Sub outage must not vouch for a read from before.
            epoch, was_active = hub.epoch, fanout.active(project)
            return await history.tail(project), epoch, was_active

        tail, epoch, was_active = await hub.single_flight(("tail", project), read)
        hub.learn_tail(project, tail, epoch, was_active)
        return tail

    async def _reset(self, pos: Pos, reason: str) -> None:
        self.client.cursor = pos
        self.sent = pos
        metrics.RESUMES.labels("reset").inc()
        await self._write(reset_frame(pos, reason))

    async def _write(self, data: bytes) -> None:
        transport = self.request.transport
        if transport is not None and transport.get_write_buffer_size() + len(data) < _FAST_WRITE_BYTES:
            await self.resp.write(data)  # stays under the transport's high-water mark: never waits
        else:
            # May wait for the client to read: bounded, a stalled client is cut off.
            async with asyncio.timeout(self.cfg.write_timeout_s):
                await self.resp.write(data)
        self.client.last_write = time.monotonic()

    async def _finish(self, reason: str) -> str:
        """Write the final event (bounded: the client may not be reading) and close.

        A peer that has not taken what is buffered within ``write_timeout_s`` gets its connection
        aborted: a closing transport otherwise waits for a reader that never comes (a live peer
        advertising a zero window is never timed out by TCP), holding the socket and its buffers.
        """
        try:
            async with asyncio.timeout(1.0):
                await self.resp.write(end_frame(reason))
        except (TimeoutError, ConnectionError):
            pass
        transport = self.request.transport
        if transport is not None and (reason == END_SLOW or transport.get_write_buffer_size()):
            # Close rather than keep the connection alive for another request: the deadline below
            # must concern this stream's peer only. Closing flushes what is buffered (the final
            # event) if the peer reads.
            transport.close()
            if transport.get_write_buffer_size():
                asyncio.get_running_loop().call_later(self.cfg.write_timeout_s, _abort_if_stalled, transport)
        return reason


def _abort_if_stalled(transport: asyncio.Transport) -> None:
    """Reset the connection: with SO_LINGER 0 the kernel drops what it still holds for the peer
    and sends RST, instead of keeping an orphaned socket probing a zero window for minutes."""
    if transport.get_write_buffer_size():  # still not taken: the peer is not reading
        metrics.STALLED_ABORTS.inc()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

