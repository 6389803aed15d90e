"""The event envelope published on Kafka topic ``atas.events`` (key = execution id).

``{v, id, type, project, execution_id, seq, occurred_at, data}``: ``id`` is unique per event
(consumers deduplicate by it), ``seq`` increases per execution.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Literal

import msgspec

EVENT_VERSION = 1
EventType = Literal["execution.started", "results.recorded", "execution.finished", "attachment.stored"]
EVENT_TYPES: tuple[str, ...] = ("execution.started", "results.recorded", "execution.finished", "attachment.stored")


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    v: int = EVENT_VERSION
    id: str
    type: EventType
    project: str
    execution_id: str
    seq: int
    occurred_at: datetime
    data: dict[str, Any] = {}


class FailedTest(msgspec.Struct, frozen=True, omit_defaults=True):
    test_id: str
    name: str
    status: str
    attempt: int = 1
    error_type: str | None = None
    error_message: str | None = None


class ExecutionStarted(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    started_at: datetime
    environment: str | None = None
    branch: str | None = None
    commit: str | None = None
    build_url: str | None = None


class ResultsRecorded(msgspec.Struct, frozen=True, omit_defaults=True):
    accepted: int
    duplicates: int
    counts: dict[str, int]  # this batch's attempts, by status
    totals: dict[str, int]  # the execution's attempt counters after this batch
    tests: dict[str, int] = {}  # the execution's tests summary after this batch (final attempts)
    failed: list[FailedTest] = []  # failed/error results of this batch (capped by the writer)
    failed_truncated: bool = False


class ExecutionFinished(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str
    finished_at: datetime
    totals: dict[str, int]  # attempt counters
    tests: dict[str, int] = {}  # tests summary (final attempts)
    wall_duration_ms: int | None = None  # finished_at - started_at
    results_duration_ms: int | None = None  # the sum of the results' durations
    duration_ms: int | None = None  # deprecated: the same as wall_duration_ms


class AttachmentStored(msgspec.Struct, frozen=True, omit_defaults=True):
    """An uploaded object passed its completion check; ``download`` is the query path."""

    id: str
    name: str
    kind: str
    content_type: str
    size_bytes: int
    download: str
    test_id: str | None = None
    attempt: int | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def new_event(type_: EventType, *, project: str, execution_id: str, seq: int, data: Any,
              occurred_at: datetime | None = None, event_id: str | None = None) -> Envelope:
    return Envelope(
        id=event_id or str(uuid.uuid4()), type=type_, project=project, execution_id=str(execution_id),
        seq=seq, occurred_at=occurred_at or datetime.now(timezone.utc), data=msgspec.to_builtins(data),
    )


def encode_event(event: Envelope) -> bytes:
    return _encoder.encode(event)


def decode_event(raw: bytes | None) -> Envelope:
    """An envelope from the bus; a record without a value (a Kafka tombstone) is undecodable too."""
    if raw is None:
        raise msgspec.DecodeError("record without a value")
    return _decoder.decode(raw)
