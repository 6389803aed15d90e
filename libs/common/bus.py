"""The event transport seam: Kafka in production, an in-process engine in ``atas dev``.

Business code (the outbox relay, the cache invalidator, the stream bridge) talks only to
:class:`EventPublisher` and :class:`EventSubscription`; :class:`KafkaBus` and :class:`MemoryBus`
decide how bytes travel. Semantics shared by both engines:

* ``publish`` returns only once every message is durably accepted (Kafka: acks=all), or raises;
* ``poll`` returns messages after the group's position; ``commit`` records the position of
  everything returned so far (call it *after* the messages were processed: at-least-once), or,
  given ``offsets`` ({partition: next offset}), exactly those — what a consumer that keeps
  polling while the commit travels has processed;
* where a group has committed nothing (new, or its offsets expired), it starts at the end, at
  the beginning with ``from_beginning``, or with ``since_s`` at the first message of the last
  ``since_s`` seconds — so a consumer deployed after its producers does not miss their first
  messages, without replaying the whole retention.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import Protocol

import msgspec

from .config import KafkaSettings
from .logging import get_logger

log = get_logger(__name__)


class Message(msgspec.Struct, frozen=True):
    key: bytes | None
    value: bytes | None  # None: a tombstone (Kafka allows records without a value)
    partition: int
    offset: int
    timestamp_ms: int | None = None


class PublishError(Exception):
    """The transport did not acknowledge every message; the caller keeps them and retries."""


class EventPublisher(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None: ...


class EventSubscription(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def poll(self, timeout_s: float, max_records: int = 500) -> list[Message]: ...
    async def commit(self, offsets: dict[int, int] | None = None) -> None: ...
    def assigned(self) -> bool: ...
    def epoch(self) -> int:
        """Changes whenever this member's partitions may have changed (a rebalance, a rejoin):
        offsets learned under an older epoch may belong to partitions owned by someone else."""


class EventBus(Protocol):
    topic: str

    def publisher(self, client_id: str = "atas") -> EventPublisher: ...
    def subscription(self, group: str, *, client_id: str = "atas", from_beginning: bool = False,
                     since_s: float | None = None) -> EventSubscription: ...


# --------------------------------------------------------------------------------------- Kafka


def kafka_security(settings: KafkaSettings) -> dict:
    """aiokafka arguments for KAFKA_SECURITY_PROTOCOL: TLS verifying the brokers' certificates and
    host names (KAFKA_TLS_CA_FILE, else the system's CAs) and SASL PLAIN/SCRAM credentials."""
    out: dict = {"security_protocol": settings.security_protocol}
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = ssl.create_default_context(cafile=settings.tls_ca_file)
    if settings.security_protocol.startswith("SASL_"):
        out.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                   sasl_plain_password=settings.sasl_password)
    return out


class KafkaPublisher:
    """aiokafka's idempotent producer (acks=all): retries inside the producer never duplicate."""

    def __init__(self, settings: KafkaSettings, client_id: str):
        self._settings = settings
        self._client_id = client_id
        self._producer = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers,
            **kafka_security(self._settings),
            client_id=self._client_id,
            enable_idempotence=True,
            acks="all",
            # No linger: the outbox relay hands over a whole batch at once (and lingers itself under
            # concurrency), so the producer's own linger only delayed every event: 2 ms of linger
            # measured as ~2.5 ms more from send to consumer on a local broker (p50 5.5 → 3.0 ms).
            linger_ms=0,
            # Bound how long a send waits for a broker, so an outage surfaces as an error the relay
            # backs off on, instead of a hang.
            request_timeout_ms=10_000,
            max_batch_size=1 << 20,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()  # flushes pending sends

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        if self._producer is None:
            raise PublishError("producer not started")
        try:
            futures = [await self._producer.send(self._settings.topic, value=value, key=key)
                       for key, value in messages]
            await asyncio.gather(*futures)
        except Exception as exc:  # aiokafka raises a family of KafkaError subclasses
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc


class KafkaSubscription:
    def __init__(self, settings: KafkaSettings, group: str, client_id: str, from_beginning: bool,
                 since_s: float | None = None):
        self._settings = settings
        self._group = group
        self._client_id = client_id
        self._reset = "earliest" if from_beginning else "latest"
        self._since_s = since_s
        self._consumer = None
        self._epoch = 0

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

        subscription = self

        class Rebalances(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked) -> None:
                subscription._epoch += 1

            async def on_partitions_assigned(self, assigned) -> None:
                subscription._epoch += 1
                if subscription._since_s is not None and assigned:
                    await subscription._start_uncommitted(consumer, assigned)

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            **kafka_security(self._settings),
            group_id=self._group,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset=self._reset,
            request_timeout_ms=10_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
        )
        consumer.subscribe([self._settings.topic], listener=Rebalances())
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def _start_uncommitted(self, consumer, assigned) -> None:
        """Seek each assigned partition without a committed offset to its first record of the last
        ``since_s`` seconds (its end if it has none). Runs inside the assignment, before the
        first fetch; if the lookup fails, those partitions fall back to ``auto_offset_reset``."""
        try:
            tps = sorted(assigned)
            committed = await asyncio.gather(*(consumer.committed(tp) for tp in tps))
            fresh = [tp for tp, offset in zip(tps, committed, strict=True) if offset is None]
            if not fresh:
                return
            # The ends first: where the lookup finds no recent record, everything from an end read
            # before it is new, so a record appended between the two calls is not skipped.
            ends = await consumer.end_offsets(fresh)
            since_ms = int((time.time() - self._since_s) * 1000)
            found = await consumer.offsets_for_times({tp: since_ms for tp in fresh})
        except Exception as exc:  # noqa: BLE001 - logged; aiokafka would swallow it
            log.warning("could not look up where a new consumer group starts; starting at the "
                        + ("beginning" if self._reset == "earliest" else "end"),
                        group=self._group, error=f"{type(exc).__name__}: {exc}")
            return
        starts = {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in fresh}
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        log.info("consumer group has no committed offset; starting at the last records",
                 group=self._group, since_s=self._since_s,
                 partitions={tp.partition: o for tp, o in sorted(starts.items())})

    def assigned(self) -> bool:
        return bool(self._consumer is not None and self._consumer.assignment())

    def epoch(self) -> int:
        return self._epoch

    async def poll(self, timeout_s: float, max_records: int = 500) -> list[Message]:
        assert self._consumer is not None, "subscription not started"
        batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Message] = []
        for tp, records in batches.items():
            out.extend(Message(r.key, r.value, tp.partition, r.offset, r.timestamp) for r in records)
        return out

    async def commit(self, offsets: dict[int, int] | None = None) -> None:
        assert self._consumer is not None, "subscription not started"
        if offsets is None:
            await self._consumer.commit()
            return
        # Only partitions this member still owns: aiokafka refuses the whole commit otherwise, and
        # a revoked partition's records are the new owner's to commit (it re-reads them; the
        # consumers of this bus deduplicate).
        owned = {tp.partition: tp for tp in self._consumer.assignment()}
        mine = {owned[p]: o for p, o in offsets.items() if p in owned}
        if mine:
            await self._consumer.commit(mine)


class KafkaBus:
    def __init__(self, settings: KafkaSettings):
        self.settings = settings
        self.topic = settings.topic

    def publisher(self, client_id: str = "atas") -> KafkaPublisher:
        return KafkaPublisher(self.settings, client_id)

    def subscription(self, group: str, *, client_id: str = "atas", from_beginning: bool = False,
                     since_s: float | None = None) -> KafkaSubscription:
        return KafkaSubscription(self.settings, group, client_id, from_beginning, since_s)

    async def ensure_topic(self, partitions: int = 12, replication_factor: int | None = None,
                           configs: dict[str, str] | None = None) -> TopicInfo:
        """Create the topic if it is missing, and describe it.

        ``replication_factor`` None: the brokers' ``default.replication.factor`` where they tell
        it, else min(3, brokers). ``configs`` apply only to a topic created here. Raises
        :class:`TopicError` when Kafka refuses (e.g. more replicas than brokers, not authorized);
        connection failures raise aiokafka's errors (the caller may retry those).
        """
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers, request_timeout_ms=10_000,
                                    **kafka_security(self.settings))
        try:
            await admin.start()
            if self.topic not in await admin.list_topics():
                replicas = replication_factor or await _default_replication(admin)
                response = await admin.create_topics(
                    [NewTopic(self.topic, partitions, replicas, topic_configs=configs or {})])
                (_, code, message), = response.topic_errors
                if code == 0:
                    return TopicInfo(self.topic, partitions, replicas, created=True)
                if code != _TOPIC_ALREADY_EXISTS:  # else created meanwhile by someone else: describe it
                    raise TopicError(f"Kafka refused to create topic {self.topic!r}: {message or 'error'} "
                                     f"(Kafka error code {code})")
            for _ in range(20):  # a topic created a moment ago may not have its metadata everywhere yet
                (topic,) = await admin.describe_topics([self.topic])
                if topic["error_code"] == 0 and topic["partitions"]:
                    return TopicInfo(self.topic, len(topic["partitions"]),
                                     len(topic["partitions"][0]["replicas"]), created=False)
                await asyncio.sleep(0.25)
            raise TopicError(f"topic {self.topic!r} exists but Kafka does not describe it "
                             f"(Kafka error code {topic['error_code']})")
        finally:
            await admin.close()


_TOPIC_ALREADY_EXISTS = 36


class TopicError(Exception):
    """Kafka refused to create or describe the events topic; the message says why."""


class TopicInfo(msgspec.Struct, frozen=True):
    name: str
    partitions: int
    replication_factor: int
    created: bool


async def _default_replication(admin) -> int:
    """What ``kafka-topics.sh --create`` without ``--replication-factor`` would use: the brokers'
    ``default.replication.factor``; if they do not tell (not authorized, as on some managed
    services), min(3, brokers)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    brokers = (await admin.describe_cluster())["brokers"]
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["node_id"]), {"default.replication.factor": None})])
        (resource,) = response.to_object()["resources"]
        if resource["error_code"] == 0:
            for entry in resource["config_entries"]:
                if entry["config_names"] == "default.replication.factor" and entry["config_value"]:
                    return int(entry["config_value"])
    except Exception as exc:  # noqa: BLE001 - fall back below
        log.info("brokers did not tell their default.replication.factor", error=f"{type(exc).__name__}: {exc}")
    return min(3, len(brokers))


# ------------------------------------------------------------------------------------ in-process


class _Group:
    def __init__(self, start: int):
        self.position = start   # next offset to hand out
        self.committed = start


class MemoryBus:
    """A single-partition, in-process log with consumer groups: the ``atas dev`` engine.

    Same contract as Kafka for one process: each group sees every message once it subscribed
    (``from_beginning`` replays what is still retained), ``commit`` records progress, and messages
    every group has committed are dropped so memory stays bounded.
    """

    def __init__(self, topic: str = "atas.events"):
        self.topic = topic
        self._log: list[Message] = []
        self._base = 0  # offset of self._log[0]
        self._groups: dict[str, _Group] = {}
        self._cond = asyncio.Condition()

    @property
    def end_offset(self) -> int:
        return self._base + len(self._log)

    async def _append(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        async with self._cond:
            now_ms = int(time.time() * 1000)
            for key, value in messages:
                self._log.append(Message(key, value, 0, self.end_offset, now_ms))
            self._cond.notify_all()

    def _join(self, group: str, from_beginning: bool, since_s: float | None) -> _Group:
        g = self._groups.get(group)
        if g is None:
            start = self._base if from_beginning else self.end_offset
            if since_s is not None:
                since_ms = time.time() * 1000 - since_s * 1000
                start = next((m.offset for m in self._log if m.timestamp_ms >= since_ms), self.end_offset)
            g = _Group(start)
            self._groups[group] = g
        return g

    async def _poll(self, group: _Group, timeout_s: float, max_records: int) -> list[Message]:
        async with self._cond:
            if group.position >= self.end_offset:
                try:
                    await asyncio.wait_for(self._cond.wait_for(lambda: group.position < self.end_offset),
                                           timeout_s)
                except TimeoutError:
                    return []
            start = max(group.position, self._base) - self._base
            batch = self._log[start:start + max_records]
            group.position = self._base + start + len(batch)
            return batch

    def _commit(self, group: _Group, offsets: dict[int, int] | None = None) -> None:
        target = group.position if offsets is None else offsets.get(0, group.committed)
        group.committed = max(group.committed, min(target, group.position))
        low = min((g.committed for g in self._groups.values()), default=self.end_offset)
        if low > self._base:
            del self._log[: low - self._base]
            self._base = low

    def publisher(self, client_id: str = "atas") -> "MemoryPublisher":
        return MemoryPublisher(self)

    def subscription(self, group: str, *, client_id: str = "atas", from_beginning: bool = False,
                     since_s: float | None = None) -> "MemorySubscription":
        return MemorySubscription(self, group, from_beginning, since_s)


class MemoryPublisher:
    def __init__(self, bus: MemoryBus):
        self._bus = bus

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        await self._bus._append(messages)


class MemorySubscription:
    def __init__(self, bus: MemoryBus, group: str, from_beginning: bool, since_s: float | None = None):
        self._bus = bus
        self._name = group
        self._from_beginning = from_beginning
        self._since_s = since_s
        self._group: _Group | None = None
        self._epoch = 0

    def epoch(self) -> int:
        return self._epoch

    async def start(self) -> None:
        self._epoch += 1
        self._group = self._bus._join(self._name, self._from_beginning, self._since_s)
        # Like a Kafka consumer rejoining: resume after the last commit, redelivering the rest.
        self._group.position = self._group.committed

    async def stop(self) -> None:
        self._group = None

    def assigned(self) -> bool:
        return self._group is not None

    async def poll(self, timeout_s: float, max_records: int = 500) -> list[Message]:
        assert self._group is not None, "subscription not started"
        return await self._bus._poll(self._group, timeout_s, max_records)

    async def commit(self, offsets: dict[int, int] | None = None) -> None:
        assert self._group is not None, "subscription not started"
        self._bus._commit(self._group, offsets)
