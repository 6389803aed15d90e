"""Per-project event history: where an event gets its position (its SSE ``id``) and where resumes read.

Two engines behind one interface:

* :class:`RedisHistory` — a capped Redis Stream per project. One Lua script per event, atomically:
  drop it when its event id was seen (Kafka redelivery), else ``XADD`` (exact ``MAXLEN``), refresh
  the TTL, remember the event id, and ``PUBLISH`` ``"<position>\\n<envelope>"`` on the project's
  channel. Uses Redis ≤ 7.0 commands only.
* :class:`MemoryHistory` — the same semantics in-process for ``atas dev``; "publishing" hands the
  event to a callback (the local fan-out).

Positions are Redis Stream ids ``<ms>-<seq>`` and compare as ``(ms, seq)`` tuples; ``0-0`` means
"before the first event". Whether a resume from position ``L`` is gap-free is decided from the
stream's first entry ``F`` and its highest deleted (trimmed) id ``D``: it is when ``L >= F`` (L is
still covered) or ``L == D`` (exactly everything after L survived). Anything else — L trimmed away
with later events, or L from an older incarnation of the stream (expired, Redis restarted empty) —
is a gap and the client is told to reset.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

Pos = tuple[int, int]
ZERO: Pos = (0, 0)
_POS_RE = re.compile(r"^(\d{1,20})-(\d{1,20})$")


def parse_pos(text: str | bytes | None) -> Pos | None:
    """``"1700000000000-3"`` → ``(1700000000000, 3)``; None when it is not a position."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    m = _POS_RE.match(text.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2))


def format_pos(pos: Pos) -> str:
    return f"{pos[0]}-{pos[1]}"


class _Head(msgspec.Struct):
    """The envelope fields the fan-out needs (filters, dedupe, latency); the rest stays bytes."""

    id: str
    type: str
    execution_id: str
    occurred_at: datetime


_head_decoder = msgspec.json.Decoder(_Head)


class Event:
    """One envelope as the stream service carries it: raw JSON plus what routing needs.

    The SSE frame is rendered once and shared by every client that receives the event.
    """

    __slots__ = ("pos", "event_id", "type", "execution_id", "occurred_ts", "payload", "_frame")

    def __init__(self, pos: Pos | None, payload: bytes):
        head = _head_decoder.decode(payload)
        self.pos = pos
        self.event_id = head.id
        self.type = head.type
        self.execution_id = head.execution_id
        self.occurred_ts = head.occurred_at.timestamp()
        self.payload = payload
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            from .sse import event_frame

            self._frame = event_frame(self)
        return self._frame

    @classmethod
    def from_published(cls, message: bytes) -> "Event":
        """Parse ``"<position>\\n<envelope>"`` as published by the append script."""
        head, _, payload = message.partition(b"\n")
        return cls(parse_pos(head), payload)

    def __repr__(self) -> str:
        return f"Event({self.pos}, {self.type}, {self.event_id})"


class Page(NamedTuple):
    """A slice of history after a position, or the news that the position is no longer covered."""

    events: list[Event]
    gap: bool
    last: Pos  # the newest position the history has handed out (a reset moves the client here)


class History(Protocol):
    async def append(self, items: Sequence[tuple[str, str, bytes]]) -> list[Pos | None]:
        """Append ``(project, event_id, envelope)`` items and publish them; None for a duplicate."""

    async def read_after(self, project: str, after: Pos, limit: int) -> Page: ...

    async def tail(self, project: str) -> Pos: ...


def covered(after: Pos, first: Pos | None, max_deleted: Pos, last: Pos) -> bool:
    """True when every event after ``after`` is still in the history (see the module docstring)."""
    if after > last:
        return False  # a position this history never handed out
    if first is None:  # empty history: nothing was ever trimmed past `after` only if after == D
        return after >= max_deleted
    return after >= first or after == max_deleted


# ----------------------------------------------------------------------------------- Redis

# KEYS: history stream, dedupe key. ARGV: envelope, channel, max len, history TTL, dedupe TTL.
_APPEND = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', 'e', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], id, 'EX', ARGV[5])
redis.call('PUBLISH', ARGV[2], id .. '\\n' .. ARGV[1])
return id
"""

# KEYS: history stream. ARGV: exclusive start id, count.
# Returns {first id or '', max deleted id, last generated id, entries} or {} when the stream is gone.
_READ = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local first, maxdel, last = '', '0-0', '0-0'
for i = 1, #info, 2 do
  local k = info[i]
  if k == 'first-entry' then
    if info[i + 1] then first = info[i + 1][1] end
  elseif k == 'max-deleted-entry-id' then maxdel = info[i + 1]
  elseif k == 'last-generated-id' then last = info[i + 1] end
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
return {first, maxdel, last, entries}
"""


class RedisHistory:
    """Capped Redis Streams (``<prefix>h:<project>``) plus Pub/Sub channels (``<prefix>c:<project>``)."""

    def __init__(self, redis: Redis, *, prefix: str, max_len: int, ttl_s: int, dedupe_ttl_s: int):
        self._redis = redis
        self.prefix = prefix
        self._max_len = max_len
        self._ttl = ttl_s
        self._dedupe_ttl = dedupe_ttl_s
        self._append = redis.register_script(_APPEND)
        self._read = redis.register_script(_READ)

    def key(self, project: str) -> str:
        return f"{self.prefix}h:{project}"

    def channel(self, project: str) -> str:
        return f"{self.prefix}c:{project}"

    async def append(self, items: Sequence[tuple[str, str, bytes]]) -> list[Pos | None]:
        if not items:
            return []
        # One pipelined round trip, one atomic script per event. (Its two keys, the project's
        # history and the event's dedupe mark, are not hash-tagged to one slot: Redis Cluster is
        # not supported, as docs/deploy.md says.) Plain EVALSHA: a pipeline of Script calls
        # would ask SCRIPT EXISTS first, a second round trip on every batch. When Redis lost its
        # script cache (restart, failover) every EVALSHA of the batch fails the same way and ran
        # nothing: load the script and send the batch again.
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for project, event_id, payload in items:
                    pipe.evalsha(self._append.sha, 2, self.key(project), f"{self.prefix}d:{event_id}",
                                 payload, self.channel(project), self._max_len, self._ttl, self._dedupe_ttl)
                replies = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                await self._redis.script_load(_APPEND)
                continue
            break
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [parse_pos(r) if r else None for r in replies]

    async def read_after(self, project: str, after: Pos, limit: int) -> Page:
        reply = await self._read(keys=[self.key(project)], args=[format_pos(after), limit])
        if not reply:
            # No history at all: only a client that has seen nothing is fully covered.
            return Page(events=[], gap=after != ZERO, last=ZERO)
        first_raw, maxdel_raw, last_raw, entries = reply
        first = parse_pos(first_raw) if first_raw else None
        last = parse_pos(last_raw) or ZERO
        if not covered(after, first, parse_pos(maxdel_raw) or ZERO, last):
            return Page(events=[], gap=True, last=last)
        events = [Event(parse_pos(eid), dict(_pairs(fields))[b"e"]) for eid, fields in entries]
        return Page(events=events, gap=False, last=last)

    async def tail(self, project: str) -> Pos:
        return (await self.read_after(project, ZERO, 0)).last


def _pairs(flat: list) -> list[tuple[bytes, bytes]]:
    return list(zip(flat[::2], flat[1::2]))


# ------------------------------------------------------------------------------- in-process


class _MemStream:
    __slots__ = ("entries", "max_deleted", "last")

    def __init__(self, max_len: int):
        self.entries: deque[Event] = deque(maxlen=max_len)
        self.max_deleted: Pos = ZERO
        self.last: Pos = ZERO


class MemoryHistory:
    """The ``atas dev`` engine: a bounded ring per project, positions minted like Redis Stream ids."""

    def __init__(self, *, max_len: int, dedupe_max: int = 100_000,
                 publish: Callable[[str, Event], None] | None = None):
        self._max_len = max_len
        self._streams: dict[str, _MemStream] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_max = dedupe_max  # bounded instead of TTL'd: the oldest ids are forgotten first
        self._last: Pos = ZERO
        self.publish = publish

    def _next_pos(self) -> Pos:
        ms = int(time.time() * 1000)
        self._last = (ms, 0) if ms > self._last[0] else (self._last[0], self._last[1] + 1)
        return self._last

    async def append(self, items: Sequence[tuple[str, str, bytes]]) -> list[Pos | None]:
        out: list[Pos | None] = []
        for project, event_id, payload in items:
            if event_id in self._seen:
                out.append(None)
                continue
            self._seen[event_id] = None
            if len(self._seen) > self._dedupe_max:
                self._seen.popitem(last=False)
            stream = self._streams.get(project)
            if stream is None:
                stream = self._streams[project] = _MemStream(self._max_len)
            event = Event(self._next_pos(), payload)
            if len(stream.entries) == stream.entries.maxlen:
                stream.max_deleted = stream.entries[0].pos
            stream.entries.append(event)
            stream.last = event.pos
            out.append(event.pos)
            if self.publish is not None:
                self.publish(project, event)
        return out

    async def read_after(self, project: str, after: Pos, limit: int) -> Page:
        stream = self._streams.get(project)
        if stream is None:
            return Page(events=[], gap=after != ZERO, last=ZERO)
        first = stream.entries[0].pos if stream.entries else None
        if not covered(after, first, stream.max_deleted, stream.last):
            return Page(events=[], gap=True, last=stream.last)
        events = [e for e in stream.entries if e.pos > after][:limit] if limit > 0 else []
        return Page(events=events, gap=False, last=stream.last)

    async def tail(self, project: str) -> Pos:
        stream = self._streams.get(project)
        return stream.last if stream else ZERO
