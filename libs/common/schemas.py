"""Request and response bodies of the ingest API, shared by the service and the harness client.

Requests are strict: unknown fields are refused (a typo in a field name must not silently drop
data), strings are bounded, timestamps must carry a timezone. Decoding errors name the field path
(``results[3].status``) through :func:`atas.common.errors.decode_json`.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .messages import describe_pattern

ResultStatus = Literal["passed", "failed", "skipped", "error"]
ExecutionStatus = Literal["running", "passed", "failed", "error", "cancelled"]
FinalStatus = Literal["passed", "failed", "error", "cancelled"]
RESULT_STATUSES: tuple[str, ...] = ("passed", "failed", "skipped", "error")

# Patterns are published in /openapi.json, where they are ECMA-262 regexes (generated clients and
# validators compile them with JavaScript semantics), and enforced by msgspec with Python's `re`.
# `\Z` is not an anchor in ECMA-262; `$` alone lets Python accept a trailing newline ("web\n").
# `$(?!\n)` means "end of text" in both: the lookahead is vacuous in JavaScript and refuses the
# newline before which Python's `$` would also match.
END = r"$(?!\n)"
# Project keys: the same rule as the `projects.key` CHECK constraint of V001.
PROJECT_KEY_PATTERN = describe_pattern(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}" + END,
    "a project key: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. web)")
ProjectKey = Annotated[str, Meta(pattern=PROJECT_KEY_PATTERN, description="project key, e.g. `web`")]
Short = Annotated[str, Meta(max_length=1024)]
Label = Annotated[str, Meta(min_length=1, max_length=1024)]
Url = Annotated[str, Meta(max_length=4096)]
# Messages and traces are bounded so one result cannot take the whole body limit by itself.
Message = Annotated[str, Meta(max_length=65_536)]
Trace = Annotated[str, Meta(max_length=1_048_576)]
Timestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339 with a timezone")]
# Attributes are free-form but bounded: an execution's come back on every /v1/executions page, a
# result's with every results page. Key counts are checked by msgspec; the encoded size (UTF-8 JSON
# bytes) by limit_problem below. Documented in docs/ingest.md.
EXECUTION_ATTRIBUTES_MAX = {"keys": 64, "bytes": 16_384}
RESULT_ATTRIBUTES_MAX = {"keys": 32, "bytes": 4_096}
Attributes = Annotated[dict[str, Any], Meta(
    max_length=EXECUTION_ATTRIBUTES_MAX["keys"],
    description=f"free-form JSON object: at most {EXECUTION_ATTRIBUTES_MAX['keys']} keys and "
                f"{EXECUTION_ATTRIBUTES_MAX['bytes']} bytes encoded")]
ResultAttributes = Annotated[dict[str, Any], Meta(
    max_length=RESULT_ATTRIBUTES_MAX["keys"],
    description=f"free-form JSON object: at most {RESULT_ATTRIBUTES_MAX['keys']} keys and "
                f"{RESULT_ATTRIBUTES_MAX['bytes']} bytes encoded")]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    pass


# ------------------------------------------------------------------------------------ requests


class ExecutionCreate(_Strict):
    """``POST /v1/executions``. Send ``id`` (a UUID you choose) so that a retry is harmless."""

    project: ProjectKey
    name: Label
    id: uuid.UUID | None = None
    environment: Short | None = None
    branch: Short | None = None
    commit: Short | None = None
    build_url: Url | None = None
    started_at: Timestamp | None = None  # default: when the server receives the request
    attributes: Attributes = {}


class Attachment(_Strict):
    """An artefact of a result: ``{"id": ...}`` links an attachment uploaded through
    ``POST /v1/executions/{id}/attachments``; ``{"uri": ...}`` references one stored elsewhere."""

    uri: Annotated[str, Meta(min_length=1, max_length=4096, description="e.g. s3://bucket/key.png")] | None = None
    id: uuid.UUID | None = None
    kind: Short | None = None  # e.g. screenshot, video, trace, log
    content_type: Short | None = None
    name: Short | None = None


class ResultIn(_Strict):
    """One attempt of one test. ``(test_id, attempt)`` identifies it within the execution: a
    retried batch with the same pair (or the same client-supplied ``id``) is counted as a duplicate
    and stored once. Report each retry of a test with the next ``attempt``."""

    test_id: Label
    name: Label
    status: ResultStatus
    id: uuid.UUID | None = None
    attempt: Annotated[int, Meta(ge=1, le=10_000)] = 1
    suite: Short | None = None
    file: Short | None = None
    started_at: Timestamp | None = None
    # A number: Python harnesses measure in float milliseconds. Stored rounded to whole ms.
    duration_ms: Annotated[float, Meta(ge=0, le=2_147_483_647)] | None = None
    error_type: Short | None = None
    error_message: Message | None = None
    error_trace: Trace | None = None
    attachments: list[Attachment] = []
    attributes: ResultAttributes = {}

    def __post_init__(self) -> None:
        if self.duration_ms is not None and not isinstance(self.duration_ms, int):
            self.duration_ms = round(self.duration_ms)


class ResultBatch(_Strict):
    """``POST /v1/executions/{id}/results``: 1..N results (N is the server's INGEST_MAX_BATCH)."""

    results: Annotated[list[ResultIn], Meta(min_length=1)]


class ExecutionFinish(_Strict):
    """``POST /v1/executions/{id}/finish``. Without ``status`` the server derives it from the final
    attempt of each test: any failed → failed, else any error → error, else passed (a test that
    passed on a retry does not fail the run). A derived status follows results sent after finish;
    an explicit one never changes."""

    status: FinalStatus | None = None
    finished_at: Timestamp | None = None  # default: when the server receives the request


# ----------------------------------------------------------------------------------- responses


ResultsDuration = Annotated[int, Meta(description="the sum of the results' durations (ms)")]
WallDuration = Annotated[int | None, Meta(description="finished_at - started_at (ms); null while running")]


class Counts(msgspec.Struct, kw_only=True):
    """Every stored attempt by status: a test retried twice counts three times."""

    total: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    error: int = 0


class Tests(msgspec.Struct, kw_only=True):
    """Distinct tests by the status of their final (highest) attempt: the numbers a harness prints.
    ``flaky``: tests whose final attempt passed after an earlier attempt failed or errored (they
    are counted in ``passed`` too)."""

    total: int = 0
    passed: int = 0
    failed: int = 0
    error: int = 0
    skipped: int = 0
    flaky: int = 0


class Execution(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    project: str
    name: str
    status: ExecutionStatus
    started_at: datetime
    finished_at: datetime | None = None
    environment: str | None = None
    branch: str | None = None
    commit: str | None = None
    build_url: str | None = None
    attributes: dict[str, Any] = {}
    counts: Counts = msgspec.field(default_factory=Counts)  # per attempt
    tests: Tests = msgspec.field(default_factory=Tests)  # per test, by its final attempt
    results_duration_ms: ResultsDuration = 0
    wall_duration_ms: WallDuration = None
    duration_ms: Annotated[int, Meta(description="deprecated: the same as results_duration_ms",
                                     extra_json_schema={"deprecated": True})] = 0


class BatchAccepted(msgspec.Struct, kw_only=True):
    """How a batch was taken: ``accepted + duplicates`` equals the number of results sent."""

    execution_id: uuid.UUID
    accepted: int
    duplicates: int
    counts: Counts  # the execution's attempt counters after this batch
    tests: Tests = msgspec.field(default_factory=Tests)  # its tests summary after this batch


class JunitImported(msgspec.Struct, kw_only=True):
    """One JUnit report became one (finished) execution."""

    execution: Execution
    accepted: int
    duplicates: int
    created: bool  # false: this exact report was imported before; nothing was added


# ------------------------------------------------------------------------- limits beyond msgspec

# PostgreSQL refuses index entries over ~2.7 KB, and the per-test rollups are keyed by project,
# branch, environment and test id together: these are bounded in UTF-8 bytes, not only in
# characters (1,024 CJK characters are 3 KB). The sum stays well under the limit.
KEY_BYTES = {"test_id": 1024, "branch": 512, "environment": 256}
# Timestamps the database, the query API and every client can represent and do arithmetic on.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)


def _too_long(value: str | None, field: str, limit: int) -> tuple[str, str] | None:
    if value is not None and len(value) * 4 > limit and len(value.encode()) > limit:
        return field, f"`{field}` is {len(value.encode())} bytes (UTF-8); the limit is {limit}"
    return None


# Control characters (C0, DEL, C1): a test id is an identifier people read, search and paste into
# URLs; a tab, newline or escape in one is a harness bug that would show up as look-alike ids.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _control(value: str, field: str) -> tuple[str, str] | None:
    found = CONTROL_CHARS.search(value)
    if found is not None:
        return field, (f"`{field}` contains the control character U+{ord(found.group()):04X} at position "
                       f"{found.start()}; test ids must be printable")
    return None


def _out_of_range(value: datetime | None, field: str) -> tuple[str, str] | None:
    if value is not None and not EARLIEST <= value < LATEST:
        return field, (f"`{field}` {value.isoformat()} is outside {EARLIEST.year}..{LATEST.year - 1}; "
                       "check the harness's clock")
    return None


_size_encoder = msgspec.json.Encoder()


def _too_big(value: dict[str, Any], field: str, limit: int) -> tuple[str, str] | None:
    if value:
        size = len(_size_encoder.encode(value))
        if size > limit:
            return field, f"`{field}` is {size} bytes encoded as JSON; the limit is {limit}"
    return None


def limit_problem(value: Any) -> tuple[str, str] | None:
    """(field, message) of the first value of a decoded request beyond limits msgspec cannot
    express (byte lengths of index keys, timestamp range), else None."""
    if isinstance(value, ExecutionCreate):
        return (_too_long(value.branch, "branch", KEY_BYTES["branch"])
                or _too_long(value.environment, "environment", KEY_BYTES["environment"])
                or _out_of_range(value.started_at, "started_at")
                or _too_big(value.attributes, "attributes", EXECUTION_ATTRIBUTES_MAX["bytes"]))
    if isinstance(value, ResultBatch):
        limit = KEY_BYTES["test_id"]
        for i, result in enumerate(value.results):
            problem = (_too_long(result.test_id, f"results[{i}].test_id", limit)
                       or _control(result.test_id, f"results[{i}].test_id")
                       or _out_of_range(result.started_at, f"results[{i}].started_at")
                       or _too_big(result.attributes, f"results[{i}].attributes", RESULT_ATTRIBUTES_MAX["bytes"]))
            if problem is not None:
                return problem
            for j, att in enumerate(result.attachments):
                if (att.uri is None) == (att.id is None):
                    return (f"results[{i}].attachments[{j}]",
                            f"`results[{i}].attachments[{j}]` needs exactly one of `id` (an uploaded "
                            "attachment) or `uri` (an artefact stored elsewhere)")
        return None
    if isinstance(value, ExecutionFinish):
        return _out_of_range(value.finished_at, "finished_at")
    return None


def schema_components() -> tuple[dict, dict]:
    """(refs by struct name, components) for the OpenAPI document."""
    types = (ExecutionCreate, ResultBatch, ExecutionFinish, Execution, BatchAccepted, JunitImported)
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    return {t.__name__: r for t, r in zip(types, refs)}, components
