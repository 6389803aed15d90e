"""Response cache: encoded response bytes under ``atas:cache:…`` keys, single flight, degraded mode.

Two engines sit behind one seam (:class:`CacheEngine`): :class:`RedisCacheEngine` (shared by every
pod) and :class:`MemoryCacheEngine` (``atas dev`` without Redis). :class:`ResponseCache` holds the
business rules and never asks which engine it has:

* an entry stores ``etag + body`` (the encoded JSON), so a hit is served without decoding or
  re-encoding anything;
* concurrent misses of one key run the aggregation once per TTL across all pods: an in-process
  future per key coalesces the requests of one process, and a short Redis lock (``SET NX PX``)
  elects one process; the others poll for the value it stores;
* entries that events make stale (an execution's status, the first pages of recent executions)
  carry a *fence*: the invalidator bumps it, and a filler that read the database before the
  invalidation finds the fence moved and does not store its stale answer;
* answers that read the per-test rollups (overview, ``tests/*``) are stamped with their project's
  *rollup generation*, read before the aggregation; the rollup worker replaces the generation after
  each round that applied deltas of the project, so an answer computed before that commit (which
  may count an execution's results but not yet list its tests) is no longer served, on any pod;
* a *near cache* keeps what a process just read for at most ``QUERY_NEAR_CACHE_MS`` (not for
  fenced entries), so hot dashboards cost one Redis GET per key, process and interval;
* a Redis that cannot be reached (connection errors, timeouts, a server that refuses every
  write) opens a short circuit (``redis_retry_ms``): requests are answered from PostgreSQL
  (``X-Cache: bypass``) without waiting on Redis, and the next request after the pause tries again,
  so the cache comes back by itself when Redis does. An error about one key (``WRONGTYPE``, a
  rejected argument) only makes that request skip the cache: it says nothing about the others;
* an entry with a TTL of 0 is not cached at all (``CACHE_TTL_*=0`` turns a view's cache off).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atas.common.logging import get_logger

from . import metrics

log = get_logger(__name__)

PREFIX = "atas:cache:v1"
# Stamped entries (see rollup_generation_key) hold `token + etag + body`: under keys of their own,
# so that during a rolling upgrade a pod of the previous version never reads one as `etag + body`.
STAMPED_PREFIX = f"{PREFIX}:g"
ETAG_LEN = 16  # hex characters of the stored ETag that precede the body
Outcome = Literal["hit", "miss", "bypass"]


class CacheUnavailable(Exception):
    """The cache engine could not be used for this operation (Redis down or timing out)."""


class CacheEntryError(CacheUnavailable):
    """Redis answered, but refused this operation on this entry (``WRONGTYPE`` on a key of another
    type, an invalid argument): skip the cache for this request; other keys are unaffected.

    A subclass, so that callers that retry on :class:`CacheUnavailable` (the invalidator, the rollup
    worker) still do; only :class:`ResponseCache` tells the two apart (no circuit for this one).
    """


# Errors that concern Redis as a whole, not one key: it cannot be reached, or refuses every write.
_UNAVAILABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OutOfMemoryError, ClusterDownError,
                       OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one response lives: a plain key, or a field of a hash that is dropped as a whole."""

    kind: str  # metric label: overview, trends, recent, status, results, tests, history
    key: str
    ttl_s: int
    field: str | None = None
    fence: str | None = None  # bumped by invalidation; see module docstring
    generation: str | None = None  # the project's rollup generation key; see rollup_generation_key

    @property
    def flight(self) -> str:
        return self.key if self.field is None else f"{self.key}#{self.field}"


@dataclass(frozen=True, slots=True)
class Cached:
    body: bytes
    etag: str
    outcome: Outcome


def params_digest(parts: Iterable[object]) -> str:
    """A short, stable digest of normalised parameters (the caller normalises and orders them)."""
    raw = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def etag_of(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=ETAG_LEN // 2).hexdigest()


# ------------------------------------------------------------------------------------- keys


def rollup_generation_key(project: str) -> str:
    """The project's rollup generation: a random token the rollup worker replaces after each round
    that applied deltas of the project (see :meth:`ResponseCache.rollups_applied`).

    Every answer that reads the per-test rollups is stored with the token read *before* its
    aggregation and is served only while the key still holds that token. A per-project key, rather
    than deleting the entries, because their keys hold digests of the parameters: finding them would
    take a SCAN. A fresh random token (not INCR) so that an expired key can never come back with the
    value of an entry that is still stored.
    """
    return f"{PREFIX}:rollups:{project}"


def overview_entry(project: str, digest: str, ttl: int) -> Entry:
    return Entry("overview", f"{STAMPED_PREFIX}:overview:{project}:{digest}", ttl,
                 generation=rollup_generation_key(project))


def trends_entry(project: str, digest: str, ttl: int) -> Entry:
    return Entry("trends", f"{PREFIX}:trends:{project}:{digest}", ttl)


def tests_entry(kind: str, project: str, digest: str, ttl: int) -> Entry:
    return Entry(kind, f"{STAMPED_PREFIX}:{kind}:{project}:{digest}", ttl, generation=rollup_generation_key(project))


def status_key(project: str, execution_id: str) -> str:
    return f"{PREFIX}:status:{project}:{execution_id}"


def status_entry(project: str, execution_id: str, ttl: int) -> Entry:
    key = status_key(project, execution_id)
    return Entry("status", key, ttl, fence=key + ":fence")


def recent_key(project: str) -> str:
    """All cached first pages of a project's recent executions live in one hash, dropped together."""
    return f"{PREFIX}:recent:{project}"


def recent_entry(project: str, digest: str, ttl: int) -> Entry:
    key = recent_key(project)
    return Entry("recent", key, ttl, field=digest, fence=key + ":fence")


# ---------------------------------------------------------------------------------- engines


class CacheEngine(Protocol):
    async def get(self, entry: Entry) -> bytes | None: ...
    async def peek(self, entry: Entry) -> tuple[bytes | None, bytes]: ...
    async def put(self, entry: Entry, value: bytes, fence: bytes | None) -> bool: ...
    async def lock(self, entry: Entry, ttl_ms: int) -> str | None: ...
    async def unlock(self, entry: Entry, token: str) -> None: ...
    async def invalidate(self, keys: Iterable[str]) -> None: ...
    async def new_generations(self, keys: Iterable[str]) -> None: ...


# Store only if the fence did not move since the filler read it (an invalidation happened meanwhile).
_PUT_FENCED = """
local cur = redis.call('GET', KEYS[2])
if (cur or '') ~= ARGV[3] then return 0 end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[4], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
end
return 1
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# A fence outlives any fill that could have read the database before the invalidation.
FENCE_TTL_S = 3600
# Entries with a `generation` are stored as `token + etag + body`; the token is what the generation
# key held before the aggregation ran (NO_GENERATION while the key does not exist).
GENERATION_LEN = 16
NO_GENERATION = b"0" * GENERATION_LEN
# A generation key only needs to outlive the entries stamped with it; once it expires those entries
# are misses (their token differs from NO_GENERATION), so any TTL is correct, a long one is cheaper.
GENERATION_TTL_S = 86_400


def _stamped(value: bytes | None, generation: bytes | None) -> bytes | None:
    """The entry without its token, or None when it was computed under another generation."""
    if value is None or value[:GENERATION_LEN] != (generation or NO_GENERATION):
        return None
    return value[GENERATION_LEN:]


class RedisCacheEngine:
    """Entries in Redis, shared by every pod. Raises :class:`CacheUnavailable` when Redis cannot be
    used, :class:`CacheEntryError` when it refuses an operation on one entry."""

    def __init__(self, redis: Redis):
        self._redis = redis
        self._put = redis.register_script(_PUT_FENCED)
        self._unlock = redis.register_script(_UNLOCK)

    async def _call(self, operation: str, aw: Awaitable):
        try:
            return await aw
        except _UNAVAILABLE_ERRORS as exc:
            metrics.CACHE_ERRORS.labels(operation).inc()
            raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except RedisError as exc:  # a reply about this key: WRONGTYPE, invalid expire time, ...
            metrics.CACHE_ERRORS.labels(operation).inc()
            raise CacheEntryError(f"{type(exc).__name__}: {exc}") from exc

    async def get(self, entry: Entry) -> bytes | None:
        if entry.generation is not None:  # one round trip, like a plain GET
            value, generation = await self._call("get", self._redis.mget(entry.key, entry.generation))
            return _stamped(value, generation)
        if entry.field is None:
            return await self._call("get", self._redis.get(entry.key))
        return await self._call("get", self._redis.hget(entry.key, entry.field))

    async def peek(self, entry: Entry) -> tuple[bytes | None, bytes]:
        """The entry (as :meth:`get`) and the fence or generation token to store a new value under,
        read together in one round trip."""
        if entry.generation is not None:
            value, generation = await self._call("peek", self._redis.mget(entry.key, entry.generation))
            return _stamped(value, generation), generation or NO_GENERATION
        if entry.fence is None:
            return await self.get(entry), b""
        if entry.field is None:
            value, fence = await self._call("peek", self._redis.mget(entry.key, entry.fence))
            return value, fence or b""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(entry.key, entry.field)
            pipe.get(entry.fence)
            value, fence = await self._call("peek", pipe.execute())
        return value, fence or b""

    async def put(self, entry: Entry, value: bytes, fence: bytes | None) -> bool:
        ttl_ms = entry.ttl_s * 1000
        if entry.generation is not None:
            # A plain SET: an answer stamped with a generation that was replaced meanwhile is stored
            # but never served (get compares the stamp), so no compare-and-set is needed here.
            await self._call("put", self._redis.set(entry.key, (fence or NO_GENERATION) + value, px=ttl_ms))
            return True
        if entry.fence is None:
            if entry.field is None:
                await self._call("put", self._redis.set(entry.key, value, px=ttl_ms))
            else:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hset(entry.key, entry.field, value)
                    pipe.pexpire(entry.key, ttl_ms, nx=True)
                    await self._call("put", pipe.execute())
            return True
        stored = await self._call("put", self._put(keys=[entry.key, entry.fence],
                                                    args=[value, ttl_ms, fence or b"", entry.field or ""]))
        return bool(stored)

    async def lock(self, entry: Entry, ttl_ms: int) -> str | None:
        token = secrets.token_hex(8)
        ok = await self._call("lock", self._redis.set(entry.flight + ":lock", token, nx=True, px=ttl_ms))
        return token if ok else None

    async def unlock(self, entry: Entry, token: str) -> None:
        await self._call("unlock", self._unlock(keys=[entry.flight + ":lock"], args=[token]))

    async def invalidate(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.incr(key + ":fence")
                pipe.expire(key + ":fence", FENCE_TTL_S)
            pipe.delete(*keys)
            await self._call("invalidate", pipe.execute())

    async def new_generations(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, secrets.token_hex(GENERATION_LEN // 2), ex=GENERATION_TTL_S)
            await self._call("generation", pipe.execute())


class MemoryCacheEngine:
    """In-process entries for ``atas dev`` (no Redis): same contract, bounded LRU, one process.

    Locks always succeed: the in-process future of :class:`ResponseCache` already coalesces misses
    of the only process there is.
    """

    def __init__(self, max_entries: int = 10_000):
        self._max = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._groups: dict[str, tuple[float, set[str]]] = {}  # hash key -> (expiry, member slots)
        self._fences: dict[str, int] = {}
        self._generations: dict[str, int] = {}  # in one process a counter never repeats

    @staticmethod
    def _slot(entry: Entry) -> str:
        return entry.flight

    def _generation(self, key: str) -> bytes:
        return b"%016x" % self._generations.get(key, 0)

    async def get(self, entry: Entry) -> bytes | None:
        slot = self._slot(entry)
        item = self._data.get(slot)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._data[slot]
            return None
        self._data.move_to_end(slot)
        if entry.generation is not None:
            return _stamped(item[1], self._generation(entry.generation))
        return item[1]

    async def peek(self, entry: Entry) -> tuple[bytes | None, bytes]:
        return await self.get(entry), await self.fence(entry)

    async def fence(self, entry: Entry) -> bytes:
        if entry.generation is not None:
            return self._generation(entry.generation)
        if entry.fence is None:
            return b""
        return str(self._fences.get(entry.fence, 0)).encode()

    async def put(self, entry: Entry, value: bytes, fence: bytes | None) -> bool:
        if entry.fence is not None and await self.fence(entry) != (fence or b""):
            return False
        if entry.generation is not None:
            value = (fence or NO_GENERATION) + value
        now = time.monotonic()
        expires = now + entry.ttl_s
        if entry.field is not None:
            group = self._groups.get(entry.key)
            if group is None or group[0] <= now:
                group = (expires, set())
                self._groups[entry.key] = group
            group[1].add(self._slot(entry))
            expires = group[0]  # like PEXPIRE NX: the hash expires as a whole
        self._data[self._slot(entry)] = (expires, value)
        self._data.move_to_end(self._slot(entry))
        while len(self._data) > self._max:
            self._data.popitem(last=False)
        return True

    async def lock(self, entry: Entry, ttl_ms: int) -> str | None:
        return "local"

    async def unlock(self, entry: Entry, token: str) -> None:
        return None

    async def invalidate(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._fences[key + ":fence"] = self._fences.get(key + ":fence", 0) + 1
            self._data.pop(key, None)
            group = self._groups.pop(key, None)
            if group is not None:
                for slot in group[1]:
                    self._data.pop(slot, None)

    async def new_generations(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._generations[key] = self._generations.get(key, 0) + 1


# ------------------------------------------------------------------------------ the cache


class ResponseCache:
    """Get-or-compute of encoded responses with single flight and a Redis circuit breaker.

    ``aggregations`` counts computations per kind (the same number the metric exports), so tests
    and the benchmark can check that a stampede ran one query.
    """

    # Waiters poll for the value a lock holder is computing: start fast (most aggregations take a
    # few ms), back off to bound the load many waiting pods put on Redis.
    POLL_FIRST_S = 0.002
    POLL_MAX_S = 0.05

    NEAR_MAX_ENTRIES = 1024

    def __init__(self, engine: CacheEngine, *, lock_ttl_ms: int = 5000, retry_ms: int = 1000,
                 near_ms: int = 0):
        self.engine = engine
        self._lock_ttl_ms = lock_ttl_ms
        self._retry_s = retry_ms / 1000
        self._near_s = near_ms / 1000
        self._down_until = 0.0
        self._inflight: dict[str, asyncio.Future[Cached]] = {}
        # The near cache: what this process just read from (or stored in) the shared cache, kept
        # for at most `near_ms`, so a dashboard polled by many users costs one Redis GET per key per
        # process per `near_ms`. Never for fenced entries (status, recent pages): an invalidation
        # handled by another pod must be visible at once. Entries stamped with a rollup generation
        # may be: a new generation drops this process's copies at once (rollups_applied) and those
        # of other processes within `near_ms` (they expire), which bounds the added staleness.
        self._near: OrderedDict[str, tuple[float, Cached, str | None]] = OrderedDict()
        self.aggregations: dict[str, int] = {}
        self._entry_errors_logged: set[tuple[str, str]] = set()

    def _near_get(self, entry: Entry) -> Cached | None:
        if self._near_s <= 0 or entry.fence is not None:
            return None
        item = self._near.get(entry.flight)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._near[entry.flight]
            return None
        return item[1]

    def _near_put(self, entry: Entry, body: bytes, etag: str) -> None:
        if self._near_s <= 0 or entry.fence is not None or entry.ttl_s <= 0:
            return
        self._near[entry.flight] = (time.monotonic() + min(self._near_s, entry.ttl_s), Cached(body, etag, "hit"),
                                    entry.generation)
        self._near.move_to_end(entry.flight)
        if len(self._near) > self.NEAR_MAX_ENTRIES:
            self._near.popitem(last=False)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: CacheUnavailable, entry: Entry) -> None:
        """Open the circuit when Redis is unavailable; an error about one entry only skips the cache
        for the request at hand (logged once per kind of entry and error)."""
        if isinstance(exc, CacheEntryError):
            seen = (entry.kind, str(exc).split(":", 1)[0])
            if seen not in self._entry_errors_logged:
                self._entry_errors_logged.add(seen)
                log.warning("cache refused an entry; answering from PostgreSQL (logged once)", kind=entry.kind,
                            key=entry.key, error=str(exc))
            return
        if self.available:
            log.warning("cache unavailable; answering from PostgreSQL", error=str(exc),
                        retry_ms=int(self._retry_s * 1000))
        self._down_until = time.monotonic() + self._retry_s

    async def _compute(self, entry: Entry, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        self.aggregations[entry.kind] = self.aggregations.get(entry.kind, 0) + 1
        metrics.AGGREGATIONS.labels(entry.kind).inc()
        started = time.perf_counter()
        try:
            return await compute()
        finally:
            metrics.AGGREGATION_SECONDS.labels(entry.kind).observe(time.perf_counter() - started)

    async def fetch(self, entry: Entry, compute: Callable[[], Awaitable[bytes]]) -> Cached:
        """The cached response for ``entry``, computing (once) and storing it on a miss."""
        near = self._near_get(entry)
        if near is not None:
            metrics.CACHE_REQUESTS.labels(entry.kind, "hit").inc()
            return near
        if entry.ttl_s > 0 and self.available:
            try:
                value = await self.engine.get(entry)
            except CacheUnavailable as exc:
                self._failed(exc, entry)
            else:
                if value is not None:
                    metrics.CACHE_REQUESTS.labels(entry.kind, "hit").inc()
                    hit = Cached(value[ETAG_LEN:], value[:ETAG_LEN].decode(), "hit")
                    self._near_put(entry, hit.body, hit.etag)
                    return hit
        flight = self._inflight.get(entry.flight)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._inflight[entry.flight] = flight
            try:
                result = await self._fill(entry, compute)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    flight.set_exception(exc)
                    flight.exception()  # mark retrieved: waiters, if any, re-raise it themselves
                else:
                    flight.cancel()
                raise
            else:
                flight.set_result(result)
                if result.outcome == "miss":
                    self._near_put(entry, result.body, result.etag)
            finally:
                self._inflight.pop(entry.flight, None)
        else:
            result = await asyncio.shield(flight)
        metrics.CACHE_REQUESTS.labels(entry.kind, result.outcome).inc()
        return result

    async def _fill(self, entry: Entry, compute: Callable[[], Awaitable[bytes]]) -> Cached:
        if entry.ttl_s <= 0:  # caching is turned off for this view: every read computes
            body = await self._compute(entry, compute)
            return Cached(body, etag_of(body), "miss")
        if not self.available:
            body = await self._compute(entry, compute)
            return Cached(body, etag_of(body), "bypass")
        try:
            return await self._fill_shared(entry, compute)
        except CacheUnavailable as exc:
            self._failed(exc, entry)
            body = await self._compute(entry, compute)
            return Cached(body, etag_of(body), "bypass")

    async def _fill_shared(self, entry: Entry, compute: Callable[[], Awaitable[bytes]]) -> Cached:
        deadline = time.monotonic() + self._lock_ttl_ms / 1000
        delay = self.POLL_FIRST_S
        while True:
            token = await self.engine.lock(entry, self._lock_ttl_ms)
            if token is not None:
                break
            # Another process is computing this key: wait for its value.
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.POLL_MAX_S)
            value = await self.engine.get(entry)
            if value is not None:
                return Cached(value[ETAG_LEN:], value[:ETAG_LEN].decode(), "miss")
            if time.monotonic() >= deadline:
                # The holder is stuck or gone; answer this request ourselves (and store it).
                token = None
                break
        try:
            # With the lock held, look again: a holder on another pod may have stored the value and
            # released its lock between our first read and our lock (the entry would otherwise be
            # aggregated twice). The same round trip reads the token a new value is stored under.
            value, fence = await self.engine.peek(entry)
            if value is not None:
                return Cached(value[ETAG_LEN:], value[:ETAG_LEN].decode(), "miss")
            body = await self._compute(entry, compute)
            etag = etag_of(body)
            try:
                await self.engine.put(entry, etag.encode() + body, fence)
            except CacheUnavailable as exc:
                self._failed(exc, entry)
                return Cached(body, etag, "bypass")
            return Cached(body, etag, "miss")
        finally:
            if token is not None:
                try:
                    await self.engine.unlock(entry, token)
                except CacheUnavailable:
                    pass  # the lock expires by itself

    async def invalidate(self, keys: Iterable[str]) -> None:
        """Drop entries (and bump their fences); raises :class:`CacheUnavailable` so the caller can retry."""
        await self.engine.invalidate(keys)

    async def rollups_applied(self, projects: Iterable[str]) -> None:
        """The rollup worker committed deltas of ``projects``: stop serving their per-test answers.

        Called after the worker's commit. Every answer stamped with the previous generation was
        aggregated (or at least started) before this call, so it may predate the commit; those
        computed from now on read the committed rollups. Raises :class:`CacheUnavailable` (Redis
        down) so the worker can retry: until then, those answers stay servable up to their TTL.
        """
        keys = {rollup_generation_key(p) for p in projects}
        try:
            await self.engine.new_generations(keys)
        finally:
            for flight in [f for f, item in self._near.items() if item[2] in keys]:
                del self._near[flight]
