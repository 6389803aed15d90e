"""Response bodies of the query API (msgspec structs: encoded once, and described in /openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta


class Range(msgspec.Struct, frozen=True):
    """The range a response covers (per-test aggregates widen it to whole UTC days)."""

    from_: datetime = msgspec.field(name="from")
    to: datetime


class Counts(msgspec.Struct, frozen=True):
    """Attempts by status (a test retried twice counts three times)."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    error: int = 0


class AttemptCounts(msgspec.Struct, frozen=True):
    """An execution's stored attempts by status, as ingest answers them."""

    total: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    error: int = 0


class Tests(msgspec.Struct, frozen=True):
    """Distinct tests by the status of their final attempt; ``flaky``: passed after an earlier
    attempt failed or errored (counted in ``passed`` too). Over several executions, the sums."""

    total: int = 0
    passed: int = 0
    failed: int = 0
    error: int = 0
    skipped: int = 0
    flaky: int = 0


class ExecutionCounts(msgspec.Struct, frozen=True):
    running: int = 0
    passed: int = 0
    failed: int = 0
    error: int = 0
    cancelled: int = 0


class Duration(msgspec.Struct, frozen=True):
    """Execution duration (the sum of its results' durations) over executions that finished."""

    mean_ms: float | None
    p95_ms: float | None


class FailingTest(msgspec.Struct, frozen=True):
    test_id: str
    name: str
    suite: str | None
    failures: int  # failed + error attempts
    runs: int
    failure_rate: float
    last_failed_at: datetime | None


class Overview(msgspec.Struct, frozen=True):
    project: str
    range: Range
    environment: str | None
    branch: str | None
    executions: int
    executions_by_status: ExecutionCounts
    results: int  # attempts
    results_by_status: Counts  # attempts
    tests: Tests  # summed over the executions
    pass_rate: float | None  # over tests' final attempts: passed / (passed + failed + error); null without any
    attempt_pass_rate: float | None  # the same over every attempt
    duration: Duration
    top_failing_tests: list[FailingTest]
    top_failing_range: Range


class TrendBucket(msgspec.Struct, frozen=True):
    start: datetime
    executions: int
    executions_by_status: ExecutionCounts
    results: int  # attempts
    results_by_status: Counts  # attempts
    tests: Tests
    pass_rate: float | None  # over tests' final attempts
    attempt_pass_rate: float | None
    duration_p50_ms: float | None
    duration_p95_ms: float | None


class Trends(msgspec.Struct, frozen=True):
    project: str
    range: Range
    bucket: str
    environment: str | None
    branch: str | None
    buckets: list[TrendBucket]


class Execution(msgspec.Struct, frozen=True):
    id: str
    project: str
    name: str
    environment: str | None
    branch: str | None
    commit: str | None
    build_url: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    updated_at: datetime
    counts: AttemptCounts  # per attempt
    tests: Tests  # per test, by its final attempt
    results_duration_ms: Annotated[int, Meta(description="the sum of the results' durations (ms)")]
    wall_duration_ms: Annotated[int | None, Meta(description="finished_at - started_at (ms); null while running")]
    total: Annotated[int, Meta(description="deprecated: counts.total", extra_json_schema={"deprecated": True})]
    duration_ms: Annotated[int, Meta(description="deprecated: results_duration_ms",
                                     extra_json_schema={"deprecated": True})]
    attributes: dict[str, Any] = {}


class ExecutionPage(msgspec.Struct, frozen=True):
    items: list[Execution]
    next_cursor: str | None


class Attachment(msgspec.Struct, frozen=True, omit_defaults=True):
    uri: str
    kind: str | None = None
    content_type: str | None = None


class Result(msgspec.Struct, frozen=True):
    test_id: str
    attempt: int
    id: str
    name: str
    suite: str | None
    file: str | None
    status: str
    started_at: datetime | None
    duration_ms: int | None
    error_type: str | None
    error_message: str | None
    error_trace: str | None
    attachments: Any = None
    attributes: dict[str, Any] = {}  # as the harness sent them (bounded by ingest)


class ResultPage(msgspec.Struct, frozen=True):
    execution_id: str
    items: list[Result]
    next_cursor: str | None


class SlowTest(msgspec.Struct, frozen=True):
    test_id: str
    name: str
    suite: str | None
    runs: int
    mean_ms: float
    max_ms: int | None


class FlakyTest(msgspec.Struct, frozen=True):
    test_id: str
    name: str
    suite: str | None
    runs: int
    flaky_commits: int  # commits on which the test both passed and failed
    retry_passes: int  # attempts > 1 that passed


class TestList(msgspec.Struct, frozen=True):
    project: str
    range: Range
    environment: str | None
    branch: str | None
    items: list[Any]


class HistoryItem(msgspec.Struct, frozen=True):
    execution_id: str
    execution_name: str
    execution_started_at: datetime
    environment: str | None
    branch: str | None
    commit: str | None
    attempt: int
    status: str
    duration_ms: int | None
    error_type: str | None
    error_message: str | None
    attachments: Any = None  # as in Result: stored uploads with their download path, uri references


class History(msgspec.Struct, frozen=True):
    project: str
    test_id: str
    items: list[HistoryItem]
    next_cursor: str | None
