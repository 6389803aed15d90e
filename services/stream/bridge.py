"""The Kafka → history bridge: a consumer group spread over the stream pods.

Filter → decode → write (history append + publish, one atomic script per event) → commit. Offsets
are committed only after Redis accepted the batch, so a crash redelivers, and the append script
drops redeliveries by event id: every event is published once. The commit names the offsets written
and travels in the background: the next poll does not wait for the broker's answer.

With Kafka and Redis (production) the bridge runs on a thread of its own, with its own event loop,
Kafka consumer and Redis connection: a fan-out to thousands of sockets keeps the main loop busy for
tens of milliseconds per event, and the bridge — the start of every other pod's fan-out too —
must not wait behind it. (The fan-out spends most of that time in the kernel's send, outside the
GIL.) The only calls back into the main loop are ``call_soon_threadsafe`` ones.

Redis down: the bridge keeps consuming, hands what it consumes straight to this pod's clients
(without a position: they get the event now, and its position once it is written), and keeps the
batch pending, uncommitted. Pending events are written, in order, as soon as Redis answers again;
only then is the offset committed. At ``MAX_PENDING`` events it stops consuming (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import msgspec

from atas.common.bus import EventBus, EventSubscription, Message
from atas.common.events import decode_event
from atas.common.heartbeat import NO_BEAT, Heartbeat
from atas.common.logging import get_logger

from . import metrics
from .fanout import MAX_LOCAL_PENDING, Hub
from .history import Event, History

log = get_logger(__name__)



class Bridge:
    """Consumes ``settings.kafka.topic`` in group ``bridge_group`` and feeds the history."""

    POLL_S = 0.5
    # Offsets of written events are committed at most this often (one broker round trip, in the
    # background). A crash redelivers at most this much, which the history dedupes.
    COMMIT_INTERVAL_S = 0.5
    COMMIT_TIMEOUT_S = 5.0
    # Commit positions every this often even without events, so a partition moving to another pod
    # in a rebalance resumes where this one was instead of at "latest".
    IDLE_COMMIT_S = 5.0
    RETRY_MAX_S = 5.0
    # Events held uncommitted while Redis is down before consumption pauses.
    MAX_PENDING = MAX_LOCAL_PENDING

    def __init__(self, bus: EventBus, history: History, hub: Hub, *, group: str, batch: int,
                 client_id: str = "atas-stream", new_group_since_s: float | None = None,
                 thread_history: Callable[[], tuple[History, Callable]] | None = None,
                 heartbeat: Heartbeat = NO_BEAT):
        """``new_group_since_s``: where the group has no committed offset (its first deployment,
        or offsets expired), start at the events of the last this many seconds rather than at the
        end: the stream pods may come up after ingest has published. Keep it within the
        history's dedupe window, so nothing a former group bridged is published twice.
        ``thread_history``: run on a thread of its own, with the history this makes there
        (and the coroutine function that closes it); else on the caller's event loop."""
        self._bus = bus
        self._heartbeat = heartbeat  # beaten from the bridge's thread: a float store, thread-safe
        self._history = history
        self._hub = hub
        self._thread_history = thread_history
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._start_error: BaseException | None = None
        self._group = group
        self._batch = batch
        self._client_id = client_id
        self._new_group_since_s = new_group_since_s
        self._sub: EventSubscription | None = None
        self._task: asyncio.Task | None = None
        self._pending: list[tuple[str, str, bytes]] = []
        self._pending_offsets: dict[int, int] = {}  # partition → next offset, of the pending events
        self._written: dict[int, int] = {}  # partition → next offset, written to Redis, to commit
        self._commit_task: asyncio.Task | None = None
        self._epoch: int | None = None  # the subscription's epoch the offsets above belong to
        self._pending_ts: float | None = None
        self._last_commit = 0.0
        self._retry_at = 0.0
        self._backoff = 0.2
        self.ready = asyncio.Event()  # assigned partitions and polled once: new events will be seen

    @property
    def assigned(self) -> bool:
        """True while this bridge owns partitions."""
        return self._sub is not None and self._sub.assigned()

    async def start(self) -> None:
        self._main_loop = asyncio.get_running_loop()
        if self._thread_history is None:
            self._task = asyncio.create_task(self._run(), name="stream-bridge")
            return
        started = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(started,), name="stream-bridge",
                                        daemon=True)
        self._thread.start()
        await asyncio.to_thread(started.wait)
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error

    def _thread_main(self, started: threading.Event) -> None:
        asyncio.run(self._thread_body(started))

    async def _thread_body(self, started: threading.Event) -> None:
        self._thread_loop = asyncio.get_running_loop()
        try:
            self._history, close = self._thread_history()
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            self._start_error = exc
            started.set()
            return
        self._task = asyncio.current_task()
        started.set()
        try:
            await self._run()
        except asyncio.CancelledError:
            pass
        finally:
            await close()

    async def stop(self) -> None:
        if self._task is None:
            return
        if self._thread is None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        else:
            with contextlib.suppress(RuntimeError):  # the loop already ended with the thread
                self._thread_loop.call_soon_threadsafe(self._task.cancel)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._task = None

    def _on_main(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the main event loop (the hub and ``ready`` live there)."""
        if self._thread is None:
            fn(*args)
        else:
            self._main_loop.call_soon_threadsafe(fn, *args)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            self._heartbeat.beat()
            sub = self._bus.subscription(self._group, client_id=self._client_id,
                                         since_s=self._new_group_since_s)
            try:
                await sub.start()
                self._sub = sub
                backoff = 0.5
                await self._consume(sub)
            except asyncio.CancelledError:
                await self._final_flush(sub)
                raise
            except Exception as exc:  # noqa: BLE001 - the bridge must outlive any broker hiccup
                log.warning("bridge consumer failed; restarting", error=f"{type(exc).__name__}: {exc}")
            finally:
                if self._commit_task is not None:
                    self._commit_task.cancel()
                    await asyncio.gather(self._commit_task, return_exceptions=True)
                    self._commit_task = None
                # A new consumer resumes from the committed offsets: what was read and not written is
                # read again (the history drops what was written already).
                self._forget_reads()
                self._epoch = None
                self._sub = None
                self._on_main(self.ready.clear)
                metrics.BRIDGE_ASSIGNED.set(0)
                with contextlib.suppress(Exception):
                    await sub.stop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _consume(self, sub: EventSubscription) -> None:
        while True:
            self._heartbeat.beat()
            if len(self._pending) < self.MAX_PENDING:
                messages = await sub.poll(self.POLL_S, self._batch)
            else:
                messages = []
                await asyncio.sleep(self.POLL_S)
            self._check_rebalance(sub)
            assigned = sub.assigned()
            metrics.BRIDGE_ASSIGNED.set(1 if assigned else 0)
            if assigned and not self.ready.is_set():
                self._on_main(self.ready.set)
            if messages:
                self._accept(messages)
            await self._flush()
            epoch = self._check_rebalance(sub)  # also one during the Redis write
            if self._commit_task is not None:
                continue  # one commit in flight at a time
            since = time.monotonic() - self._last_commit
            if self._written and since >= self.COMMIT_INTERVAL_S:
                self._commit_task = asyncio.create_task(self._commit(sub, self._written, epoch))
                self._written = {}
            elif not self._pending and not self._written and assigned and since > self.IDLE_COMMIT_S:
                await self._commit(sub, None, epoch)  # positions: every record polled was written

    def _check_rebalance(self, sub: EventSubscription) -> int:
        """After a rebalance, forget the offsets noted so far: they may be of partitions now owned
        elsewhere (or owned again after someone else committed further), so none is committed.
        Their records are re-read from the committed offsets (the history drops repeats); events
        held while Redis is down go too, so they are not queued and delivered locally twice."""
        epoch = sub.epoch()
        if epoch != self._epoch:
            self._epoch = epoch
            self._forget_reads()
        return epoch

    def _forget_reads(self) -> None:
        """Drop what was read and not committed: events held, their offsets, offsets written."""
        self._pending, self._pending_offsets, self._written = [], {}, {}
        self._pending_ts = None

    def _accept(self, messages: list[Message]) -> None:
        local: list[tuple[str, Event]] = []
        # Writes are failing (events wait, or the last write failed): deliver locally meanwhile.
        redis_down = bool(self._pending) or self._backoff > 0.2
        for m in messages:
            try:
                env = decode_event(m.value)  # a tombstone (no value) is undecodable too
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # Poison record: nothing could ever process it, so it must not block the partition.
                metrics.BRIDGE_EVENTS.labels("invalid").inc()
                log.error("undecodable event skipped", partition=m.partition, offset=m.offset, error=str(exc))
                self._pending_offsets[m.partition] = m.offset + 1  # processed: committed with the rest
                continue
            self._pending.append((env.project, env.id, m.value))
            self._pending_offsets[m.partition] = m.offset + 1
            if redis_down:
                local.append((env.project, Event(None, m.value)))
        if self._pending_ts is None and self._pending:
            stamps = [m.timestamp_ms for m in messages if m.timestamp_ms]
            self._pending_ts = min(stamps) / 1000 if stamps else time.time()
        for project, event in local:
            self._on_main(self._hub.deliver_one, project, event)
            metrics.BRIDGE_EVENTS.labels("local_only").inc()

    async def _flush(self) -> None:
        if not self._pending and self._pending_offsets:  # only undecodable records: nothing to write
            self._written.update(self._pending_offsets)
            self._pending_offsets = {}
        if not self._pending or time.monotonic() < self._retry_at:
            metrics.BRIDGE_PENDING.set(len(self._pending))
            return
        batch = self._pending
        try:
            positions = await self._history.append(batch)
        except Exception as exc:  # noqa: BLE001 - Redis errors come in many types (connection, timeout, OOM)
            if self._backoff <= 0.2:
                log.warning("history write failed; delivering to local clients only until Redis is back",
                            error=f"{type(exc).__name__}: {exc}", pending=len(batch))
                # The first failure of an outage: this batch was not delivered locally yet.
                for project, _eid, payload in batch:
                    self._on_main(self._hub.deliver_one, project, Event(None, payload))
                    metrics.BRIDGE_EVENTS.labels("local_only").inc()
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.RETRY_MAX_S)
            metrics.BRIDGE_PENDING.set(len(batch))
            return
        if self._backoff > 0.2:
            log.info("history writes resumed", written=len(batch))
        self._backoff = 0.2
        self._retry_at = 0.0
        self._pending = []
        self._written.update(self._pending_offsets)
        self._pending_offsets = {}
        published = sum(1 for p in positions if p is not None)
        metrics.BRIDGE_EVENTS.labels("published").inc(published)
        metrics.BRIDGE_EVENTS.labels("duplicate").inc(len(positions) - published)
        if self._pending_ts is not None:
            metrics.BRIDGE_LAG.observe(max(0.0, time.time() - self._pending_ts))
            self._pending_ts = None
        metrics.BRIDGE_PENDING.set(0)

    async def _commit(self, sub: EventSubscription, offsets: dict[int, int] | None, epoch: int) -> None:
        """Commit ``offsets`` (written to Redis, noted in ``epoch``), or with None the positions
        (nothing unwritten)."""
        self._last_commit = time.monotonic()
        try:
            # Bounded: aiokafka retries a commit while the group coordinator is unavailable, and an
            # idle commit is awaited by the loop that polls.
            async with asyncio.timeout(self.COMMIT_TIMEOUT_S):
                await sub.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - e.g. a rebalance; the records are redelivered, deduped
            log.warning("bridge commit failed; records may be redelivered (they are deduplicated)",
                        error=f"{type(exc).__name__}: {exc}")
            if offsets and sub.epoch() == epoch:  # retried with the next commit, unless newer
                for partition, offset in offsets.items():  # offsets or a rebalance supersede them
                    self._written.setdefault(partition, offset)
        finally:
            if asyncio.current_task() is self._commit_task:
                self._commit_task = None

    async def _final_flush(self, sub: EventSubscription) -> None:
        """On shutdown: write what is pending (briefly) and commit, so the next owner starts after it."""
        if not self._pending and not self._written and self._commit_task is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                if self._commit_task is not None:
                    await asyncio.shield(self._commit_task)
                self._retry_at = 0.0
                await self._flush()
                if self._written and sub.epoch() == self._epoch:
                    await sub.commit(self._written)
                    self._written = {}
