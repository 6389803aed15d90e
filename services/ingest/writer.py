"""The write path: executions, result batches and their outbox events, one transaction each.

Every function here runs inside a transaction the caller opened and does a fixed number of
statements, whatever the batch size (never a statement per row). A batch is first tried with one
``COPY``; if any of its results is already stored (a retry), the caller rolls back and runs the
batch again through one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING``, which
stores only what is new. Concurrent batches for one execution serialise on the execution's
row lock, which is taken first, so counters stay exact and overlapping batches cannot deadlock on
each other's result keys.

An execution keeps two summaries (V014): ``counts``, every stored attempt by status, and
``tests``, distinct tests by their final (highest) attempt plus the flaky ones. A batch adds its
attempts to the first; for the second it reads, under the same row lock, the stored attempts of
the tests it touched and adds the difference between their summary before and after the batch,
so results in any order (a lower attempt after a higher one, a retried batch) keep it exact.

The events of DESIGN.md are appended to the outbox in the same transaction, with ``seq`` from
``executions.last_seq``: committed data and its events are one unit.

A status derived at finish comes from the final attempt of each test (a retry that passed makes
the test pass), and is derived again when results arrive after finish (``status_source``, V012);
a status the client sent is never changed.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta, timezone

import asyncpg
import msgspec

from atas.common.errors import ApiError
from atas.common.events import (
    Envelope, ExecutionFinished, ExecutionStarted, FailedTest, ResultsRecorded, encode_event, new_event,
)
from atas.common.logging import get_logger
from atas.common.schemas import (
    RESULT_STATUSES, BatchAccepted, Counts, Execution, ExecutionCreate, ExecutionFinish, ResultIn, Tests,
)

from . import metrics
from .config import IngestConfig
from .conflicts import check_conflicts
from .summary import TEST_KEYS, Attempt, only_new_tests, tests_delta

log = get_logger(__name__)

# Called with the execution's project once it is known (under the row lock); raises ApiError 403.
Authorize = Callable[[str], None]

_hash_encoder = msgspec.json.Encoder(order="sorted")
_json = msgspec.json.Encoder()

_EXECUTION_COLUMNS = ("id, project, name, environment, branch, commit_sha, build_url, attributes, status, "
                      "started_at, finished_at, total, passed, failed, skipped, errored, duration_ms, request_hash, "
                      "status_source, tests_total, tests_passed, tests_failed, tests_skipped, tests_errored, "
                      "tests_flaky, max_attempt")

_INSERT_EXECUTION = f"""
INSERT INTO executions (id, project, name, environment, branch, commit_sha, build_url, attributes,
                        started_at, request_hash, last_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1)
ON CONFLICT (id) DO NOTHING
RETURNING {_EXECUTION_COLUMNS}
"""

_LOCK_EXECUTION = f"""
SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = $1 FOR NO KEY UPDATE
"""

# One statement for the whole batch. ON CONFLICT DO NOTHING skips rows whose (test_id, attempt) or
# client id is already stored, including duplicates within the batch itself; the aggregate tells
# what was really inserted, so counters and events count exactly the stored rows.
_INSERT_RESULTS = """
WITH ins AS (
    INSERT INTO results (execution_started_at, execution_id, project, test_id, attempt, id, name, suite,
                         file, status, started_at, duration_ms, error_type, error_message, error_trace,
                         attachments, attributes)
    SELECT $1, $2, $3, u.test_id, u.attempt, coalesce(u.id, gen_random_uuid()), u.name, u.suite, u.file,
           u.status, u.started_at, u.duration_ms, u.error_type, u.error_message, u.error_trace,
           u.attachments::jsonb, u.attributes::jsonb
    FROM unnest($4::text[], $5::int[], $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[],
                $11::timestamptz[], $12::int[], $13::text[], $14::text[], $15::text[], $16::text[],
                $17::text[])
         AS u(test_id, attempt, id, name, suite, file, status, started_at, duration_ms, error_type,
              error_message, error_trace, attachments, attributes)
    ON CONFLICT DO NOTHING
    RETURNING status, test_id, attempt, duration_ms
)
SELECT status, count(*)::int AS n, coalesce(sum(duration_ms), 0)::bigint AS ms,
       array_agg(test_id) AS test_ids, array_agg(attempt) AS attempts
FROM ins GROUP BY status
"""

_ADD_COUNTS = f"""
UPDATE executions
SET total = total + $2, passed = passed + $3, failed = failed + $4, skipped = skipped + $5,
    errored = errored + $6, duration_ms = duration_ms + $7, last_seq = last_seq + $8,
    tests_total = tests_total + $9, tests_passed = tests_passed + $10, tests_failed = tests_failed + $11,
    tests_skipped = tests_skipped + $12, tests_errored = tests_errored + $13, tests_flaky = tests_flaky + $14,
    max_attempt = greatest(max_attempt, $15), updated_at = now()
WHERE id = $1
RETURNING {_EXECUTION_COLUMNS}, last_seq
"""

# Every stored attempt of the given tests of one execution: a primary-key range per test, within
# the execution's one partition. Read after the batch's insert, under the execution's row lock, so
# it sees every committed attempt and the batch's own. The LATERAL subquery (OFFSET 0 keeps it
# one) makes each test a parameterised primary-key lookup: written as `test_id = ANY($3)`, the
# planner, with the near-zero row estimate of a just-written execution, walked the execution's
# whole (execution, id) index and filtered every row against the array — 15-25 ms for 500 tests
# of a 10k-result execution, against about 1 ms this way.
_ATTEMPTS_OF_TESTS = """
SELECT t.test_id, r.attempt, r.status
FROM unnest($3::text[]) AS t(test_id)
CROSS JOIN LATERAL (
    SELECT attempt, status FROM results
    WHERE execution_started_at = $1 AND execution_id = $2 AND test_id = t.test_id
    OFFSET 0
) r
"""

_FINISH = f"""
UPDATE executions
SET status = $2, status_source = $3, finished_at = $4, last_seq = last_seq + 1, updated_at = now()
WHERE id = $1
RETURNING {_EXECUTION_COLUMNS}, last_seq
"""

# A derived status that results arriving after finish changed (finished_at stays: the run ended then).
_REDERIVE = f"""
UPDATE executions SET status = $2, last_seq = last_seq + 1, updated_at = now()
WHERE id = $1
RETURNING {_EXECUTION_COLUMNS}, last_seq
"""

# The client confirms the derived status explicitly: from now on late results leave it alone.
_PIN_STATUS = f"""
UPDATE executions SET status_source = 'explicit', updated_at = now()
WHERE id = $1
RETURNING {_EXECUTION_COLUMNS}
"""

_APPEND_OUTBOX = """
INSERT INTO outbox (event_id, event_key, payload)
SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bytea[])
"""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def request_hash(req: ExecutionCreate) -> bytes:
    """Digest of a create request (with its id), to tell a retry from a conflicting reuse of the id."""
    return hashlib.sha256(_hash_encoder.encode(req)).digest()


def counts_of(row: asyncpg.Record) -> Counts:
    return Counts(total=row["total"], passed=row["passed"], failed=row["failed"], skipped=row["skipped"],
                  error=row["errored"])


def tests_of(row: asyncpg.Record) -> Tests:
    return Tests(total=row["tests_total"], passed=row["tests_passed"], failed=row["tests_failed"],
                 error=row["tests_errored"], skipped=row["tests_skipped"], flaky=row["tests_flaky"])


def wall_duration_ms(row: asyncpg.Record) -> int | None:
    if row["finished_at"] is None:
        return None
    return int((row["finished_at"] - row["started_at"]).total_seconds() * 1000)


def execution_of(row: asyncpg.Record) -> Execution:
    return Execution(
        id=row["id"], project=row["project"], name=row["name"], status=row["status"],
        started_at=row["started_at"], finished_at=row["finished_at"], environment=row["environment"],
        branch=row["branch"], commit=row["commit_sha"], build_url=row["build_url"],
        attributes=row["attributes"] or {}, counts=counts_of(row), tests=tests_of(row),
        results_duration_ms=row["duration_ms"], wall_duration_ms=wall_duration_ms(row),
        duration_ms=row["duration_ms"],
    )


def status_of_final_attempts(failed: int, errored: int) -> str:
    """The status of an execution finished without an explicit one, from the number of tests
    whose final attempt failed / errored: any failed → failed, else any errored → error, else
    passed (skipped tests do not fail a run)."""
    if failed:
        return "failed"
    if errored:
        return "error"
    return "passed"


def derive_status(row: asyncpg.Record) -> str:
    """Derive the status of the execution ``row`` (as read under its row lock) from its tests
    summary, which counts the tests whose final attempt failed / errored exactly."""
    return status_of_final_attempts(row["tests_failed"], row["tests_errored"])


# The failed tests listed in one results.recorded event take at most this many bytes (then
# failed_truncated): events stay far below Kafka's default 1 MB message limit.
EVENT_FAILED_BYTES = 256 * 1024
_entry_encoder = msgspec.json.Encoder()


def finished_event(row: asyncpg.Record) -> Envelope:
    """``execution.finished`` for the execution as ``row`` (with ``last_seq``) has it now."""
    return new_event(
        "execution.finished", project=row["project"], execution_id=str(row["id"]), seq=row["last_seq"],
        data=ExecutionFinished(status=row["status"], finished_at=row["finished_at"],
                               totals=msgspec.structs.asdict(counts_of(row)),
                               tests=msgspec.structs.asdict(tests_of(row)),
                               wall_duration_ms=wall_duration_ms(row), results_duration_ms=row["duration_ms"],
                               duration_ms=wall_duration_ms(row)),
    )


async def append_events(conn: asyncpg.Connection, events: Sequence[Envelope]) -> None:
    if not events:
        return
    await conn.execute(
        _APPEND_OUTBOX,
        [uuid.UUID(e.id) for e in events],
        [e.execution_id.encode() for e in events],
        [encode_event(e) for e in events],
    )


def check_start_time(started_at: datetime, now: datetime, config: IngestConfig, field: str) -> None:
    if started_at > now + timedelta(seconds=config.max_clock_skew_s):
        raise ApiError(422, "invalid_field",
                       f"start time {started_at.isoformat()} is more than {config.max_clock_skew_s} s in "
                       "the future; check the harness's clock", field=field)


# ---------------------------------------------------------------------------------- executions


async def start_execution(conn: asyncpg.Connection, req: ExecutionCreate, config: IngestConfig, *,
                          now: datetime | None = None,
                          default_start: datetime | None = None) -> tuple[Execution, bool]:
    """Create the execution, or return the existing one for a repeated request (``created`` False).

    The start time is the request's, else ``default_start``, else now. Raises ApiError 409 when the
    id exists with a different request body.
    """
    now = now or utcnow()
    if req.id is None:
        req = msgspec.structs.replace(req, id=uuid.uuid4())
    digest = request_hash(req)
    started_at = req.started_at or default_start or now
    check_start_time(started_at, now, config, "started_at")
    await conn.execute("INSERT INTO projects (key) VALUES ($1) ON CONFLICT DO NOTHING", req.project)
    row = await conn.fetchrow(
        _INSERT_EXECUTION, req.id, req.project, req.name, req.environment, req.branch, req.commit,
        req.build_url, req.attributes, started_at, digest)
    if row is None:
        existing = await conn.fetchrow(f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = $1", req.id)
        if existing is None:  # created and deleted between the two statements: not a state we produce
            raise ApiError(409, "conflict", f"execution {req.id} is being changed concurrently; retry")
        if existing["request_hash"] != digest:
            raise ApiError(409, "conflict",
                           f"execution {req.id} already exists with different attributes; "
                           "use a new id for a new execution", field="id")
        return execution_of(existing), False
    started = new_event(
        "execution.started", project=req.project, execution_id=str(req.id), seq=1,
        data=ExecutionStarted(name=req.name, started_at=started_at, environment=req.environment,
                              branch=req.branch, commit=req.commit, build_url=req.build_url),
    )
    await append_events(conn, [started])
    return execution_of(row), True


async def _lock(conn: asyncpg.Connection, execution_id: uuid.UUID, authorize: Authorize) -> asyncpg.Record:
    row = await conn.fetchrow(_LOCK_EXECUTION, execution_id)
    if row is None:
        raise ApiError(404, "not_found", f"execution {execution_id} does not exist; start it with "
                                         "POST /v1/executions")
    authorize(row["project"])
    return row


# Order of the unnest arrays in _INSERT_RESULTS ($4..$15); attachments and attributes follow as JSON.
_PLAIN_FIELDS = ("test_id", "attempt", "id", "name", "suite", "file", "status", "started_at", "duration_ms",
                 "error_type", "error_message", "error_trace")


def _columns(results: Sequence[ResultIn]) -> list[list]:
    """Column arrays for the unnest insert."""
    enc = _json.encode
    cols = [[getattr(r, f) for r in results] for f in _PLAIN_FIELDS]
    cols.append([enc(r.attachments).decode() if r.attachments else None for r in results])
    cols.append([enc(r.attributes).decode() if r.attributes else None for r in results])
    return cols


@dataclass(slots=True)
class _Stored:
    """What a batch really stored. ``attempts`` is built only when the tests summary needs it:
    a batch of first attempts (the hot path) never does, and listing 500 attempts costs more than
    the rest of the bookkeeping together."""

    by_status: dict[str, int]
    duration: int
    failed: set[tuple[str, int]]  # (test_id, attempt) of failed / errored attempts
    top_attempt: int  # the highest attempt stored (0: nothing)
    attempts: Callable[[], list[Attempt]]


def _distinct(results: Sequence[ResultIn]) -> bool:
    """True when no two results of the batch share (test_id, attempt) or a client id."""
    keys = {(r.test_id, r.attempt) for r in results}
    ids = [r.id for r in results if r.id is not None]
    return len(keys) == len(results) and len(set(ids)) == len(ids)


def _tally(results: Sequence[ResultIn]) -> _Stored:
    by_status = dict.fromkeys(RESULT_STATUSES, 0)
    duration = top = 0
    failed: set[tuple[str, int]] = set()
    for r in results:
        by_status[r.status] += 1
        duration += r.duration_ms or 0
        if r.attempt > top:
            top = r.attempt
        if r.status in ("failed", "error"):
            failed.add((r.test_id, r.attempt))
    return _Stored(by_status, duration, failed, top, lambda: [(r.test_id, r.attempt, r.status) for r in results])


# COPY text format: NULL is \N; backslash, newline, carriage return and tab inside values are escaped.
_NULL = "\\N"
_COPY_COLUMNS = ("execution_started_at", "execution_id", "project", "test_id", "attempt", "name", "suite", "file",
                 "status", "started_at", "duration_ms", "error_type", "error_message", "error_trace",
                 "attachments", "attributes")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_data(started_at: datetime, execution_id: uuid.UUID, project: str, results: Sequence[ResultIn],
               with_ids: bool) -> bytes:
    """The batch as COPY text. Rows are joined unescaped first and escaped only when the check says
    a value holds a special character: almost no row does, and escaping every field costs more
    than the COPY itself."""
    enc = _json.encode
    prefix = "\t".join((started_at.isoformat(), str(execution_id), _escape(project), ""))
    separators = len(_COPY_COLUMNS) - 3 - (0 if with_ids else 1)
    lines = []
    for r in results:
        fields = (r.test_id, str(r.attempt), r.name, r.suite, r.file, r.status,
                  None if r.started_at is None else r.started_at.isoformat(),
                  None if r.duration_ms is None else str(r.duration_ms),
                  r.error_type, r.error_message, r.error_trace,
                  enc(r.attachments).decode() if r.attachments else None,
                  enc(r.attributes).decode() if r.attributes else None)
        if with_ids:
            fields += (str(r.id or uuid.uuid4()),)
        line = "\t".join([_NULL if f is None else f for f in fields])
        if (line.count("\\") != fields.count(None) or line.count("\t") != separators
                or "\n" in line or "\r" in line):
            line = "\t".join([_NULL if f is None else _escape(f) for f in fields])
        lines.append(prefix + line)
    lines.append("")
    return "\n".join(lines).encode()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    """COPY source: an async iterable keeps asyncpg from reading a file object in a worker thread."""
    yield data


class AlreadyStored(Exception):
    """The optimistic COPY met a result that is already stored (a retried batch). The transaction
    is aborted: roll it back and call :func:`add_results` again with ``optimistic=False``."""


async def _copy_results(conn: asyncpg.Connection, started_at: datetime, execution_id: uuid.UUID, project: str,
                        results: Sequence[ResultIn]) -> _Stored:
    """The fast path for a batch seen for the first time: one COPY, about twice the rate of an
    ``INSERT ... ON CONFLICT``. No savepoint (it would cost two round trips and a subtransaction on
    every batch to spare the rare retry one): a duplicate aborts the transaction (AlreadyStored)."""
    # Without client ids the column is left out and PostgreSQL generates them (V011).
    with_ids = any(r.id is not None for r in results)
    data = _copy_data(started_at, execution_id, project, results, with_ids)
    try:
        await conn.copy_to_table("results", source=_once(data), format="text",
                                 columns=_COPY_COLUMNS + ("id",) if with_ids else _COPY_COLUMNS)
    except asyncpg.UniqueViolationError:
        raise AlreadyStored() from None
    return _tally(results)


async def _insert_new_results(conn: asyncpg.Connection, started_at: datetime, execution_id: uuid.UUID,
                              project: str, results: Sequence[ResultIn]) -> _Stored:
    """Insert what is not stored yet; the aggregate of the inserted rows says what that was."""
    rows = await conn.fetch(_INSERT_RESULTS, started_at, execution_id, project, *_columns(results))
    by_status = dict.fromkeys(RESULT_STATUSES, 0)
    duration = 0
    inserted: list[Attempt] = []
    for r in rows:
        by_status[r["status"]] = r["n"]
        duration += r["ms"]
        inserted.extend((t, a, r["status"]) for t, a in zip(r["test_ids"], r["attempts"]))
    failed = {(t, a) for t, a, status in inserted if status in ("failed", "error")}
    return _Stored(by_status, duration, failed, max((a for _, a, _ in inserted), default=0), lambda: inserted)


async def _tests_delta(conn: asyncpg.Connection, lock: asyncpg.Record, stored: _Stored) -> dict[str, int]:
    """The change of the execution's tests summary by what the batch ``stored`` (row lock held)."""
    if only_new_tests(lock["max_attempt"], stored.top_attempt):
        # Every attempt is a new test: the batch's counts are its tests (no per-result work on
        # the hot path, where building the general delta cost ~2 µs per result).
        return {"total": sum(stored.by_status.values()), **stored.by_status, "flaky": 0}
    inserted = stored.attempts()
    test_ids = list({t for t, _, _ in inserted})
    rows = await conn.fetch(_ATTEMPTS_OF_TESTS, lock["started_at"], lock["id"], test_ids)
    return tests_delta([(r["test_id"], r["attempt"], r["status"]) for r in rows], inserted)


async def add_results(conn: asyncpg.Connection, execution_id: uuid.UUID, results: Sequence[ResultIn],
                      config: IngestConfig, authorize: Authorize, *, optimistic: bool = True) -> BatchAccepted:
    """Store a batch; duplicates (same test_id + attempt, or same id) are skipped and counted.

    ``optimistic``: try the COPY fast path first; it raises AlreadyStored (transaction aborted)
    when the batch was stored before, and the caller retries in a new transaction without it.
    """
    started = time.perf_counter()
    lock = await _lock(conn, execution_id, authorize)
    project = lock["project"]
    if optimistic and _distinct(results):
        stored = await _copy_results(conn, lock["started_at"], execution_id, project, results)
    else:  # a retry (or a batch repeating itself): skip what is already stored, refuse what differs
        await check_conflicts(conn, lock["started_at"], execution_id, results)
        stored = await _insert_new_results(conn, lock["started_at"], execution_id, project, results)
    by_status, duration, failed_keys = stored.by_status, stored.duration, stored.failed
    accepted = sum(by_status.values())
    tests = await _tests_delta(conn, lock, stored) if accepted else dict.fromkeys(TEST_KEYS, 0)
    row = await conn.fetchrow(
        _ADD_COUNTS, execution_id, accepted, by_status["passed"], by_status["failed"], by_status["skipped"],
        by_status["error"], duration, 1 if accepted else 0, tests["total"], tests["passed"], tests["failed"],
        tests["skipped"], tests["error"], tests["flaky"], stored.top_attempt)
    totals = counts_of(row)
    events: list[Envelope] = []
    if accepted:
        failed: list[FailedTest] = []
        budget = EVENT_FAILED_BYTES
        for r in results:
            if (r.test_id, r.attempt) in failed_keys and len(failed) < config.event_max_failed:
                entry = FailedTest(test_id=r.test_id, name=r.name, status=r.status, attempt=r.attempt,
                                   error_type=r.error_type, error_message=(r.error_message or "")[:1000] or None)
                # Bounded in bytes too (names of 1,024 multi-byte or escaped characters): an event
                # Kafka refuses as too large would never leave the outbox.
                budget -= len(_entry_encoder.encode(entry))
                if budget < 0:
                    break
                failed.append(entry)
                failed_keys.discard((r.test_id, r.attempt))  # a key repeated in the batch is listed once
        event = new_event(
            "results.recorded", project=project, execution_id=str(execution_id), seq=row["last_seq"],
            data=ResultsRecorded(accepted=accepted, duplicates=len(results) - accepted,
                                 counts={k: v for k, v in by_status.items() if v},
                                 totals=msgspec.structs.asdict(totals),
                                 tests=msgspec.structs.asdict(tests_of(row)), failed=failed,
                                 failed_truncated=bool(failed_keys)),
        )
        events.append(event)
        if row["status_source"] == "derived":
            # Finished with a derived status and these results came late: they may change it
            # (a failing test retried into a pass, or a new failure). Consumers see a second
            # execution.finished with a higher seq; the finish time stays.
            status = derive_status(row)
            if status != row["status"]:
                previous = row["status"]
                row = await conn.fetchrow(_REDERIVE, execution_id, status)
                events.append(finished_event(row))
                metrics.STATUS_REDERIVED.inc()
                log.info("derived status changed by late results", execution_id=str(execution_id),
                         previous=previous, status=status)
        await append_events(conn, events)
    for status, n in by_status.items():
        if n:
            metrics.RESULTS_INGESTED.labels(status).inc(n)
    if len(results) > accepted:
        metrics.RESULTS_DUPLICATE.inc(len(results) - accepted)
    metrics.BATCH_SIZE.observe(len(results))
    metrics.WRITE_LATENCY.labels("results").observe(time.perf_counter() - started)
    return BatchAccepted(execution_id=execution_id, accepted=accepted, duplicates=len(results) - accepted,
                         counts=totals, tests=tests_of(row))


async def finish_execution(conn: asyncpg.Connection, execution_id: uuid.UUID, req: ExecutionFinish,
                           config: IngestConfig, authorize: Authorize, *,
                           now: datetime | None = None) -> tuple[Execution, bool]:
    """Set the final status (explicit or derived) and end time. Finishing again is harmless and
    returns the execution as it is (``changed`` False); a different explicit status is a 409.

    The same status sent explicitly after it was derived pins it: late results no longer change it.
    """
    current = await _lock(conn, execution_id, authorize)
    if current["status"] != "running":
        if req.status is not None and req.status != current["status"]:
            how = " (derived from its results)" if current["status_source"] == "derived" else ""
            raise ApiError(409, "conflict", f"execution {execution_id} already finished as "
                                            f"{current['status']!r}{how}", field="status")
        if req.status is not None and current["status_source"] == "derived":
            current = await conn.fetchrow(_PIN_STATUS, execution_id)
        return execution_of(current), False
    finished_at = req.finished_at or now or utcnow()
    if finished_at < current["started_at"]:
        # The server may have stamped the start while the harness's clock, a little behind, stamps
        # the end: within the skew tolerance the end is clamped to the start, beyond it refused.
        if current["started_at"] - finished_at > timedelta(seconds=config.max_clock_skew_s):
            raise ApiError(422, "invalid_field", "finished_at is before the execution's start "
                                                 f"({current['started_at'].isoformat()})", field="finished_at")
        finished_at = current["started_at"]
    if req.status is not None:
        status, source = req.status, "explicit"
    else:
        status, source = derive_status(current), "derived"
    row = await conn.fetchrow(_FINISH, execution_id, status, source, finished_at)
    await append_events(conn, [finished_event(row)])
    return execution_of(row), True
