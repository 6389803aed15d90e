"""HTTP handlers of the query API: validate, authorise, then read through the cache.

Every handler parses its query string into a struct (400 naming the parameter), checks the token
for ``query:read`` on ``project`` (401/403), and answers encoded JSON with an ``ETag``
(``If-None-Match`` → 304). Cacheable reads also say ``X-Cache: hit|miss|bypass``.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from aiohttp import web

from atas.common.app import SETTINGS
from atas.common.auth import Principal, authenticate, authorize, token_from_request
from atas.common.engines import ENGINES
from atas.common.errors import ApiError, bad_request, not_found, parse_query
from atas.common.messages import describe_pattern
from atas.common.schemas import EARLIEST, END, LATEST, ProjectKey

from . import cache as c
from .attachments import attachments_of
from . import schemas as s
from .config import QueryConfig
from .repository import QueryRepository, Scope

SCOPE = "query:read"
MAX_BUCKETS = 5000  # a trends answer wider than this is a mistake (hours over a year), not a chart
STATUSES = ("passed", "failed", "skipped", "error")
EXECUTION_STATUSES = ("running", "passed", "failed", "error", "cancelled")
# Instants a request may name (`from`, `to`, a cursor's range) are those ingest stores (EARLIEST..
# LATEST, UTC). Outside them a date is a typo, and near datetime's own limits (years 1 and 9999)
# the range arithmetic would overflow.
INT4_MAX = 2**31 - 1  # attempts are `integer` columns

_encoder = msgspec.json.Encoder()


class _NextCursor(msgspec.Struct):
    next_cursor: str | None = None


# A cached first page is served as stored; only its cursor is read back, for the Link header.
_next_cursor_of = msgspec.json.Decoder(_NextCursor)


class _VerifiedTokens:
    """Tokens this process already verified, so a dashboard's repeated reads skip HS256 and claim
    parsing (a sizeable share of a cache hit). Entries are dropped at expiry; bounded in size."""

    MAX = 4096

    def __init__(self) -> None:
        self._seen: dict[str, Principal] = {}

    def principal(self, request: web.Request) -> Principal:
        token = token_from_request(request)
        if token is not None:
            known = self._seen.get(token)
            # expires_at already includes verify_token's clock-skew allowance: the same deadline.
            if known is not None and (known.expires_at is None or time.time() < known.expires_at):
                return known
        principal = authenticate(request, request.app[SETTINGS].jwt_secret)
        if token is not None:
            if len(self._seen) >= self.MAX:
                self._seen.clear()
            self._seen[token] = principal
        return principal


class QueryState:
    """What the handlers share, stored under one app key by :func:`atas.query.app.setup`."""

    def __init__(self, config: QueryConfig, cache: c.ResponseCache):
        self.config = config
        self.cache = cache
        self.repo: QueryRepository | None = None
        self.invalidator = None  # atas.query.invalidation.Invalidator once started
        self.tokens = _VerifiedTokens()  # per app: one secret


QUERY_STATE = web.AppKey("atas_query_state", QueryState)


# ------------------------------------------------------------------------------ parameters

# Environment and branch filters: as long as ingest accepts them, and no control characters (NUL
# cannot even be sent to PostgreSQL; git refuses control characters in branch names).
Label = Annotated[str, msgspec.Meta(max_length=1024, pattern=describe_pattern(
    r"^[^\x00-\x1f\x7f]*" + END, "text without control characters (newlines, tabs, NUL)"))]


class RangeParams(msgspec.Struct, forbid_unknown_fields=False):
    project: ProjectKey
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    environment: Label | None = None
    branch: Label | None = None


class TrendParams(RangeParams):
    bucket: str = "day"


class TopParams(RangeParams):
    limit: int | None = None  # the view's default: 10 in the overview, 20 in tests/*


class ListParams(RangeParams):
    cursor: str | None = None
    limit: int | None = None
    status: str | None = None


class ProjectParams(msgspec.Struct):
    # Optional: the id names the execution, and the token's projects decide whether it may be read.
    project: ProjectKey | None = None


def _utc(value: datetime) -> datetime | None:
    """``value`` in UTC (naive means UTC), or None when that is not a representable datetime
    (0001-01-01T00:00+01:00 is in year 0 in UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        return None


def _parse_time(value: str, name: str) -> datetime:
    text = value.strip()
    # RFC 3339 allows a lowercase `t` and `z`; Python 3.11's fromisoformat wants them uppercase.
    if len(text) > 10 and text[10] == "t":
        text = text[:10] + "T" + text[11:]
    if text.endswith("z"):
        text = text[:-1] + "Z"
    try:
        parsed = _utc(datetime.fromisoformat(text))
    except ValueError:
        hint = ""
        if " " in text and text.rsplit(" ", 1)[-1][:2].isdigit():
            # `?from=2026-01-31T12:00:00+02:00` sent unencoded: the `+` of the offset arrives as a space.
            hint = "; a `+` in a URL query string means a space: encode the offset's `+` as %2B"
        raise bad_request(f"`{name}` must be an ISO-8601 date or time such as 2026-01-31T12:00:00Z, "
                          f"got {value!r}{hint}", field=name, code="invalid_parameter") from None
    if parsed is None or not EARLIEST <= parsed <= LATEST:
        raise bad_request(f"`{name}` must be between {EARLIEST.date()} and {LATEST.date()} (UTC), got {value!r}",
                          field=name, code="invalid_parameter")
    return parsed


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ceil_minute(t: datetime) -> datetime:
    floor = t.replace(second=0, microsecond=0)
    return floor if floor == t else floor + timedelta(minutes=1)


def resolve_range(p: RangeParams, config: QueryConfig, *, required: bool = True) -> tuple[datetime, datetime] | None:
    """``from``/``to`` as UTC datetimes (``to`` exclusive), checked against the configured maximum.

    Without ``to`` the range ends at the next whole minute, and without ``from`` it starts
    ``default_range_days`` earlier: dashboards that send no range share one cache entry a minute.
    """
    if not required and p.from_ is None and p.to is None:
        return None
    end = _parse_time(p.to, "to") if p.to is not None else _ceil_minute(_now())
    # Both ends lie within EARLIEST..LATEST, so no arithmetic on them (here, day_range) can overflow.
    start = (_parse_time(p.from_, "from") if p.from_ is not None
             else max(end - timedelta(days=config.default_range_days), EARLIEST))
    if start >= end:
        raise bad_request(f"`from` ({start.isoformat()}) must be before `to` ({end.isoformat()})",
                          field="from" if p.from_ is not None else "to", code="invalid_range")
    if end - start > timedelta(days=config.max_range_days):
        raise bad_request(f"the range from {start.isoformat()} to {end.isoformat()} exceeds the maximum of "
                          f"{config.max_range_days} days", field="to", code="range_too_large")
    return start, end


def day_range(start: datetime, end: datetime) -> tuple[date, date]:
    """Whole UTC days covering [start, end): per-test rollups have day granularity."""
    first = start.date()
    last = end.date() if end.time() == datetime.min.time() else end.date() + timedelta(days=1)
    return first, last


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def _limit(value: int | None, config: QueryConfig, *, default: int | None = None) -> int:
    limit = value if value is not None else (default or config.default_page_size)
    if not 1 <= limit <= config.max_page_size:
        raise bad_request(f"`limit` must be between 1 and {config.max_page_size}, got {limit}",
                          field="limit", code="invalid_parameter")
    return limit


def _optional(value: str | None) -> str | None:
    return value if value not in (None, "") else None


# ------------------------------------------------------------------------------ cursors


def encode_cursor(kind: str, *values: Any) -> str:
    raw = _encoder.encode([kind, *values])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, kind: str, types: tuple[type, ...]) -> tuple:
    """Parse an opaque cursor of ``kind``; 400 when it is not one this endpoint handed out.

    Cursors come back from clients, so their contents are checked as strictly as parameters:
    datetimes must carry an offset and exist in UTC (they are returned in UTC), integers are
    attempts (1..2**31-1, an ``integer`` column), strings hold no NUL (PostgreSQL text cannot).
    Strings may hold other control characters: they are stored test ids, which ingest accepts.
    """
    problem = bad_request("`cursor` is not valid for this endpoint; restart from the first page",
                          field="cursor", code="invalid_cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise problem from None
    if not isinstance(data, list) or len(data) != len(types) + 1 or data[0] != kind:
        raise problem
    out = []
    for value, typ in zip(data[1:], types, strict=True):
        try:
            if typ is datetime:
                value = datetime.fromisoformat(value)
                if value.tzinfo is None:
                    raise ValueError
                value = _utc(value)
                # The same range as the `from`/`to` parameters: a hand-made cursor is no way around it.
                if value is None or not EARLIEST <= value <= LATEST:
                    raise ValueError
            elif typ is uuid.UUID:
                value = str(uuid.UUID(value))
            elif not isinstance(value, typ) or isinstance(value, bool):
                raise ValueError
            elif typ is int and not 1 <= value <= INT4_MAX:
                raise ValueError
            elif typ is str and "\x00" in value:
                raise ValueError
        except (TypeError, ValueError, AttributeError):
            raise problem from None
        out.append(value)
    return tuple(out)


# ------------------------------------------------------------------------------ responses


def _etag_matches(request: web.Request, etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return etag in tags


def respond(request: web.Request, body: bytes, etag: str, outcome: str | None,
            extra: dict[str, str] | None = None) -> web.Response:
    headers = {"ETag": f'"{etag}"', "Cache-Control": "private, no-cache", "Vary": "Authorization"}
    if outcome is not None:
        headers["X-Cache"] = outcome
    if extra:
        headers.update(extra)
    if _etag_matches(request, etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


def respond_uncached(request: web.Request, value: Any, extra: dict[str, str] | None = None) -> web.Response:
    body = _encoder.encode(value)
    return respond(request, body, c.etag_of(body), None, extra)


def _state(request: web.Request) -> tuple[QueryState, QueryRepository]:
    state = request.app[QUERY_STATE]
    if state.repo is None:
        raise ApiError(503, "unavailable", "the database is not connected yet; retry later",
                       headers={"Retry-After": "1"})
    return state, state.repo


def _auth(request: web.Request, project: str) -> None:
    """401 without a valid token, 403 without ``query:read`` on ``project``."""
    authorize(request.app[QUERY_STATE].tokens.principal(request), SCOPE, project)


def _scope(p: RangeParams, rng: tuple[datetime, datetime]) -> Scope:
    return Scope(p.project, rng[0], rng[1], _optional(p.environment), _optional(p.branch))


def _digest(scope: Scope, *extra: Any) -> str:
    return c.params_digest([scope.start.isoformat(), scope.end.isoformat(), scope.environment,
                            scope.branch, *extra])


def _counts(r) -> s.Counts:
    return s.Counts(passed=r["passed"], failed=r["failed"], skipped=r["skipped"], error=r["errored"])


def _tests(r) -> s.Tests:
    return s.Tests(total=r["tests_total"], passed=r["tests_passed"], failed=r["tests_failed"],
                   error=r["tests_errored"], skipped=r["tests_skipped"], flaky=r["tests_flaky"])


def _exec_counts(r) -> s.ExecutionCounts:
    return s.ExecutionCounts(running=r["ex_running"], passed=r["ex_passed"], failed=r["ex_failed"],
                             error=r["ex_error"], cancelled=r["ex_cancelled"])


def _pass_rate(passed: int, failed: int, errored: int) -> float | None:
    denominator = passed + failed + errored
    return round(passed / denominator, 6) if denominator else None


def _float(v) -> float | None:
    return None if v is None else round(float(v), 3)


def _range(start: datetime, end: datetime) -> s.Range:
    return s.Range(from_=start, to=end)


def _failing(rows) -> list[s.FailingTest]:
    return [s.FailingTest(test_id=r["test_id"], name=r["name"], suite=r["suite"], failures=r["failures"],
                          runs=r["runs"], failure_rate=round(r["failures"] / r["runs"], 6) if r["runs"] else 0.0,
                          last_failed_at=r["last_failed_at"]) for r in rows]


# ------------------------------------------------------------------------------ handlers


class _TopRequest(NamedTuple):
    state: QueryState
    repo: QueryRepository
    limit: int
    scope: Scope
    first: date  # the whole UTC days per-test rollups cover
    last: date


def _top_request(request: web.Request, default_limit: int) -> _TopRequest:
    """The shared preamble of the per-test views: parameters, auth, limit, range and its days."""
    state, repo = _state(request)
    p = parse_query(TopParams, request)
    _auth(request, p.project)
    scope = _scope(p, resolve_range(p, state.config))
    first, last = day_range(scope.start, scope.end)
    return _TopRequest(state, repo, _limit(p.limit, state.config, default=default_limit), scope, first, last)


async def overview(request: web.Request) -> web.Response:
    state, repo, limit, scope, first, last = _top_request(request, default_limit=10)
    entry = c.overview_entry(scope.project, _digest(scope, limit),
                             request.app[SETTINGS].cache_ttl.overview)

    async def compute() -> bytes:
        r = await repo.overview(scope)
        top = await repo.top_failing(scope, first, last, limit)
        return _encoder.encode(s.Overview(
            project=scope.project, range=_range(scope.start, scope.end), environment=scope.environment,
            branch=scope.branch, executions=r["executions"], executions_by_status=_exec_counts(r),
            results=r["results"], results_by_status=_counts(r), tests=_tests(r),
            pass_rate=_pass_rate(r["tests_passed"], r["tests_failed"], r["tests_errored"]),
            attempt_pass_rate=_pass_rate(r["passed"], r["failed"], r["errored"]),
            duration=s.Duration(mean_ms=_float(r["duration_mean"]), p95_ms=_float(r["duration_p95"])),
            top_failing_tests=_failing(top), top_failing_range=_range(_day_start(first), _day_start(last)),
        ))

    got = await state.cache.fetch(entry, compute)
    return respond(request, got.body, got.etag, got.outcome)


_BUCKET_SPAN = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


async def trends(request: web.Request) -> web.Response:
    state, repo = _state(request)
    p = parse_query(TrendParams, request)
    _auth(request, p.project)
    if p.bucket not in _BUCKET_SPAN:
        raise bad_request(f"`bucket` must be one of hour, day, week, got {p.bucket!r}", field="bucket",
                          code="invalid_parameter")
    scope = _scope(p, resolve_range(p, state.config))
    if (scope.end - scope.start) / _BUCKET_SPAN[p.bucket] > MAX_BUCKETS:
        raise bad_request(f"the range holds more than {MAX_BUCKETS} {p.bucket} buckets; use a larger "
                          f"bucket or a shorter range", field="bucket", code="range_too_large")
    entry = c.trends_entry(scope.project, _digest(scope, p.bucket), request.app[SETTINGS].cache_ttl.trends)

    async def compute() -> bytes:
        rows = await repo.trends(scope, p.bucket)
        buckets = [s.TrendBucket(
            start=r["bucket"], executions=r["executions"], executions_by_status=_exec_counts(r),
            results=r["results"], results_by_status=_counts(r), tests=_tests(r),
            pass_rate=_pass_rate(r["tests_passed"], r["tests_failed"], r["tests_errored"]),
            attempt_pass_rate=_pass_rate(r["passed"], r["failed"], r["errored"]),
            duration_p50_ms=_float(r["duration_p50"]), duration_p95_ms=_float(r["duration_p95"]),
        ) for r in rows]
        return _encoder.encode(s.Trends(project=scope.project, range=_range(scope.start, scope.end),
                                        bucket=p.bucket, environment=scope.environment,
                                        branch=scope.branch, buckets=buckets))

    got = await state.cache.fetch(entry, compute)
    return respond(request, got.body, got.etag, got.outcome)


def execution_view(r) -> s.Execution:
    return s.Execution(
        id=str(r["id"]), project=r["project"], name=r["name"], environment=r["environment"],
        branch=r["branch"], commit=r["commit_sha"], build_url=r["build_url"], status=r["status"],
        started_at=r["started_at"], finished_at=r["finished_at"], updated_at=r["updated_at"],
        counts=s.AttemptCounts(total=r["total"], passed=r["passed"], failed=r["failed"], skipped=r["skipped"],
                               error=r["errored"]),
        tests=_tests(r), results_duration_ms=r["duration_ms"],
        wall_duration_ms=(None if r["finished_at"] is None
                          else int((r["finished_at"] - r["started_at"]).total_seconds() * 1000)),
        total=r["total"], duration_ms=r["duration_ms"], attributes=r["attributes"] or {},
    )


def _next_link(request: web.Request, cursor: str | None) -> dict[str, str]:
    if cursor is None:
        return {}
    query = request.query.copy()  # keeps repeated parameters (status=failed&status=error)
    query["cursor"] = cursor
    url = request.rel_url.with_query(query)
    return {"Link": f'<{url}>; rel="next"'}


async def executions(request: web.Request) -> web.Response:
    state, repo = _state(request)
    p = parse_query(ListParams, request)
    _auth(request, p.project)
    limit = _limit(p.limit, state.config)
    rng = resolve_range(p, state.config, required=False)
    status = _optional(p.status)
    if status is not None and status not in EXECUTION_STATUSES:
        raise bad_request(f"`status` must be one of {', '.join(EXECUTION_STATUSES)}, got {status!r}",
                          field="status", code="invalid_parameter")
    after = decode_cursor(p.cursor, "ex", (datetime, uuid.UUID)) if p.cursor else None
    env, branch = _optional(p.environment), _optional(p.branch)

    async def page() -> tuple[bytes, str | None]:
        rows = await repo.executions_page(p.project, limit=limit + 1, after=after, environment=env,
                                          branch=branch, status=status, start=rng[0] if rng else None,
                                          end=rng[1] if rng else None)
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = (encode_cursor("ex", rows[-1]["started_at"].isoformat(), str(rows[-1]["id"]))
                  if more else None)
        return _encoder.encode(s.ExecutionPage(items=[execution_view(r) for r in rows], next_cursor=cursor)), cursor

    if after is not None:  # deeper pages are cheap (keyset) and rarely shared: not cached
        body, cursor = await page()
        return respond(request, body, c.etag_of(body), None, _next_link(request, cursor))
    digest = c.params_digest([limit, env, branch, status, rng[0].isoformat() if rng else None,
                              rng[1].isoformat() if rng else None])
    entry = c.recent_entry(p.project, digest, request.app[SETTINGS].cache_ttl.recent)

    async def compute() -> bytes:
        return (await page())[0]

    got = await state.cache.fetch(entry, compute)
    cursor = _next_cursor_of.decode(got.body).next_cursor
    return respond(request, got.body, got.etag, got.outcome, _next_link(request, cursor))


def _execution_id(request: web.Request) -> str:
    raw = request.match_info["id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise bad_request(f"execution id must be a UUID, got {raw!r}", field="id",
                          code="invalid_parameter") from None


async def _owned_execution(request: web.Request, repo: QueryRepository, project: str | None, execution_id: str):
    """The execution, if the token may read it (and it belongs to ``project`` when one is given).

    One answer, 404, for an execution that does not exist, sits in another project than the one
    named, or belongs to a project the token may not read: another tenant's ids are not confirmed.
    """
    row = await repo.execution(execution_id)
    if row is not None:
        principal = request.app[QUERY_STATE].tokens.principal(request)
        if (project is not None and row["project"] != project) or not principal.can(SCOPE, row["project"]):
            row = None
    if row is None:
        where = f" in project {project!r}" if project is not None else ""
        raise not_found(f"execution {execution_id} not found{where}")
    return row


def _auth_optional(request: web.Request, project: str | None) -> None:
    """Like :func:`_auth` when a project is named; else only a valid token with ``query:read``."""
    if project is not None:
        _auth(request, project)
    elif SCOPE not in request.app[QUERY_STATE].tokens.principal(request).scopes:
        raise ApiError(403, "forbidden", f"token lacks scope {SCOPE!r}")


async def execution_status(request: web.Request) -> web.Response:
    state, repo = _state(request)
    p = parse_query(ProjectParams, request)
    _auth_optional(request, p.project)
    execution_id = _execution_id(request)
    if p.project is None:
        # Without a project the cache entry's key is unknown until the row is read: one primary-key
        # lookup, answered uncached (the ETag still saves the body).
        row = await _owned_execution(request, repo, None, execution_id)
        return respond_uncached(request, execution_view(row))
    entry = c.status_entry(p.project, execution_id, request.app[SETTINGS].cache_ttl.status)

    async def compute() -> bytes:
        return _encoder.encode(execution_view(await _owned_execution(request, repo, p.project, execution_id)))

    got = await state.cache.fetch(entry, compute)
    return respond(request, got.body, got.etag, got.outcome)


class ResultParams(msgspec.Struct):
    project: ProjectKey | None = None  # optional, as for GET /v1/executions/{id}
    cursor: str | None = None
    limit: int | None = None
    status: str | list[str] | None = None


async def execution_results(request: web.Request) -> web.Response:
    state, repo = _state(request)
    p = parse_query(ResultParams, request)
    _auth_optional(request, p.project)
    execution_id = _execution_id(request)
    limit = _limit(p.limit, state.config)
    raw = [p.status] if isinstance(p.status, str) else (p.status or [])
    statuses = sorted({v.strip() for item in raw for v in item.split(",") if v.strip()})
    bad = [v for v in statuses if v not in STATUSES]
    if bad:
        raise bad_request(f"`status` must be among {', '.join(STATUSES)}, got {', '.join(bad)}",
                          field="status", code="invalid_parameter")
    after = decode_cursor(p.cursor, "rs", (str, int)) if p.cursor else None
    row = await _owned_execution(request, repo, p.project, execution_id)
    rows = await repo.results_page(row["started_at"], execution_id, limit=limit + 1, after=after,
                                   statuses=statuses or None)
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor("rs", rows[-1]["test_id"], rows[-1]["attempt"]) if more else None
    linked = await attachments_of(request.app[ENGINES].pool, p.project, execution_id, rows)
    items = [s.Result(test_id=r["test_id"], attempt=r["attempt"], id=str(r["id"]), name=r["name"],
                      suite=r["suite"], file=r["file"], status=r["status"], started_at=r["started_at"],
                      duration_ms=r["duration_ms"], error_type=r["error_type"],
                      error_message=r["error_message"], error_trace=r["error_trace"],
                      attachments=att, attributes=r["attributes"] or {}) for r, att in zip(rows, linked)]
    return respond_uncached(request, s.ResultPage(execution_id=execution_id, items=items, next_cursor=cursor),
                            _next_link(request, cursor))


def _tests_handler(kind: Literal["failing", "slowest", "flaky"]):
    async def handler(request: web.Request) -> web.Response:
        state, repo, limit, scope, first, last = _top_request(request, default_limit=20)
        entry = c.tests_entry(f"tests_{kind}", scope.project,
                              c.params_digest([first, last, scope.environment, scope.branch, limit]),
                              state.config.cache_ttl_tests)

        async def compute() -> bytes:
            items: list[Any]
            if kind == "failing":
                items = _failing(await repo.top_failing(scope, first, last, limit))
            elif kind == "slowest":
                items = [s.SlowTest(test_id=r["test_id"], name=r["name"], suite=r["suite"], runs=r["runs"],
                                    mean_ms=round(r["mean_ms"], 3), max_ms=r["max_ms"])
                         for r in await repo.slowest(scope, first, last, limit)]
            else:
                items = [s.FlakyTest(test_id=r["test_id"], name=r["name"] or r["test_id"], suite=r["suite"],
                                     runs=r["runs"], flaky_commits=r["flaky_commits"],
                                     retry_passes=r["retry_passes"])
                         for r in await repo.flaky(scope, first, last, limit)]
            return _encoder.encode(s.TestList(project=scope.project, range=_range(_day_start(first), _day_start(last)),
                                              environment=scope.environment, branch=scope.branch, items=items))

        got = await state.cache.fetch(entry, compute)
        return respond(request, got.body, got.etag, got.outcome)

    handler.__name__ = f"tests_{kind}"
    return handler


class HistoryParams(RangeParams):
    cursor: str | None = None
    limit: int | None = None


def _test_id(request: web.Request) -> str:
    test_id = request.match_info["test_id"]
    if "\x00" in test_id:  # other control characters are allowed: ingest stores them in test ids
        raise bad_request("test id must not contain NUL characters", field="test_id", code="invalid_parameter")
    return test_id


def _history_cursor(cursor: str, config: QueryConfig) -> tuple[tuple[datetime, str, int], datetime, datetime]:
    """The position after which the next page starts, and the range of the first page.

    The range travels in the cursor because without ``from``/``to`` it is relative to now: computed
    again for each page, its start would move past rows that no page has listed yet.
    """
    started_at, execution_id, attempt, start, end = decode_cursor(
        cursor, "th", (datetime, uuid.UUID, int, datetime, datetime))
    if not EARLIEST <= start < end <= LATEST or end - start > timedelta(days=config.max_range_days):
        raise bad_request("`cursor` is not valid for this endpoint; restart from the first page",
                          field="cursor", code="invalid_cursor")
    return (started_at, execution_id, attempt), start, end


async def test_history(request: web.Request) -> web.Response:
    state, repo = _state(request)
    p = parse_query(HistoryParams, request)
    _auth(request, p.project)
    limit = _limit(p.limit, state.config)
    start, end = resolve_range(p, state.config)
    test_id = _test_id(request)
    after = None
    if p.cursor:  # later pages keep the range of the first one
        after, start, end = _history_cursor(p.cursor, state.config)
    rows = await repo.history(p.project, test_id, start=start, end=end, limit=limit + 1, after=after,
                              environment=_optional(p.environment), branch=_optional(p.branch))
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = None
    if more:
        last = rows[-1]
        cursor = encode_cursor("th", last["execution_started_at"].isoformat(), str(last["execution_id"]),
                               last["attempt"], start.isoformat(), end.isoformat())
    linked = await attachments_of(request.app[ENGINES].pool, p.project, None, rows)
    items = [s.HistoryItem(execution_id=str(r["execution_id"]), execution_name=r["execution_name"],
                           execution_started_at=r["execution_started_at"], environment=r["environment"],
                           branch=r["branch"], commit=r["commit_sha"], attempt=r["attempt"], status=r["status"],
                           duration_ms=r["duration_ms"], error_type=r["error_type"],
                           error_message=r["error_message"], attachments=att) for r, att in zip(rows, linked)]
    return respond_uncached(request, s.History(project=p.project, test_id=test_id, items=items, next_cursor=cursor),
                            _next_link(request, cursor))


ROUTES = [
    ("/v1/dashboard/overview", overview),
    ("/v1/executions", executions),
    ("/v1/executions/{id}", execution_status),
    ("/v1/executions/{id}/results", execution_results),
    ("/v1/trends", trends),
    ("/v1/tests/failing", _tests_handler("failing")),
    ("/v1/tests/slowest", _tests_handler("slowest")),
    ("/v1/tests/flaky", _tests_handler("flaky")),
    # [\s\S], not `.`: a test id may hold a newline (ingest stores what harnesses send)
    (r"/v1/tests/{test_id:[\s\S]+}/history", test_history),
]
