"""HTTP handlers of the ingest API. Thin: authenticate, decode, one transaction in the writer, encode.

Order of checks, so a client learns the most useful thing first: token (401) and scope (403) →
content type (415), size (413) and body (400/422) → the execution (404) and its project (403).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import msgspec
from aiohttp import web

from atas.common.app import SETTINGS
from atas.common.auth import Principal, authenticate, authorize
from atas.common.engines import ENGINES
from atas.common.errors import ApiError, check_json_content_type, decode_json, parse_query, read_body
from atas.common.schemas import (
    ExecutionCreate, ExecutionFinish, JunitImported, Label, ProjectKey, ResultBatch, Short, Url, limit_problem,
)

from . import links, metrics, writer
from .config import IngestConfig
from .junit import parse_junit, report_window

T = TypeVar("T")
SCOPE = "ingest:write"
INGEST_CONFIG = web.AppKey("atas_ingest_config", IngestConfig)
# Reports larger than this are parsed in a worker thread so the event loop keeps serving.
_PARSE_IN_THREAD_BYTES = 256 * 1024
_JUNIT_NAMESPACE = uuid.UUID("5b0c3c1e-6f1a-4c5e-9a57-0d7f2e1a4a11")
_encoder = msgspec.json.Encoder()


def _respond(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json",
                        headers=headers)


class _NoParams(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON routes take no query parameters: a stray one is refused, not ignored."""


def _principal(request: web.Request) -> Principal:
    if request.query and request.path != "/v1/junit":
        parse_query(_NoParams, request)  # 400 naming the unknown parameter
    principal = authenticate(request, request.app[SETTINGS].jwt_secret)
    if SCOPE not in principal.scopes:
        raise ApiError(403, "forbidden", f"token lacks scope {SCOPE!r}")
    return principal


def _authorizer(principal: Principal):
    return lambda project: authorize(principal, SCOPE, project)


def _execution_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"execution id must be a UUID, got {raw[:64]!r}",
                       field="id") from None


def _find_nul(value: Any, path: str = "") -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            if "\x00" in k:
                return f"{path}.{k!r}".lstrip(".")
            found = _find_nul(v, f"{path}.{k}".lstrip("."))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_nul(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


async def _read(request: web.Request, type_: type[T]) -> T:
    check_json_content_type(request)
    body = await read_body(request, request.app[INGEST_CONFIG].max_body_bytes)
    value = decode_json(body, type_)
    # PostgreSQL text and jsonb cannot hold NUL characters; refuse them here with the field's path
    # instead of failing in the database. The byte scan is cheap and almost never matches.
    if b"\\u0000" in body:
        try:
            field = _find_nul(msgspec.json.decode(body))
        except RecursionError:
            field = "(deeply nested value)"
        if field is not None:
            raise ApiError(422, "invalid_field", f"NUL characters (\\u0000) are not allowed at `{field}`",
                           field=field)
    _check_limits(value)
    return value


def _check_limits(value: Any) -> None:
    problem = limit_problem(value)
    if problem is not None:
        field, message = problem
        raise ApiError(422, "invalid_field", message, field=field)


@asynccontextmanager
async def _transaction(request: web.Request) -> AsyncIterator[asyncpg.Connection]:
    pool = request.app[ENGINES].pool
    if pool is None:
        raise ApiError(503, "unavailable", "the database is not ready; retry later", headers={"Retry-After": "5"})
    try:
        async with pool.acquire() as conn:
            async with conn.transaction():
                yield conn
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError) as exc:
        # Input that passed validation but that PostgreSQL refuses: the client's to fix, not a 500.
        raise ApiError(422, "invalid_value", f"a value was refused by the database: {exc}") from None


# ------------------------------------------------------------------------------------ handlers


async def create_execution(request: web.Request) -> web.Response:
    principal = _principal(request)
    req = await _read(request, ExecutionCreate)
    authorize(principal, SCOPE, req.project)
    started = time.perf_counter()
    async with _transaction(request) as conn:
        execution, created = await writer.start_execution(conn, req, request.app[INGEST_CONFIG])
    metrics.WRITE_LATENCY.labels("start").observe(time.perf_counter() - started)
    headers = {"Location": f"/v1/executions/{execution.id}"}
    return _respond(execution, 201 if created else 200, headers)


async def add_results(request: web.Request) -> web.Response:
    principal = _principal(request)
    execution_id = _execution_id(request)
    config = request.app[INGEST_CONFIG]
    batch = await _read(request, ResultBatch)
    if len(batch.results) > config.max_batch:
        raise ApiError(413, "batch_too_large", f"the batch has {len(batch.results)} results; the limit is "
                                               f"{config.max_batch}: split it", field="results",
                       details={"max_results": config.max_batch})
    try:
        async with _transaction(request) as conn:
            await links.check_result_links(conn, execution_id, batch.results)
            accepted = await writer.add_results(conn, execution_id, batch.results, config, _authorizer(principal))
    except writer.AlreadyStored:  # a retried batch: again, storing only what is new
        async with _transaction(request) as conn:
            accepted = await writer.add_results(conn, execution_id, batch.results, config, _authorizer(principal),
                                                optimistic=False)
    return _respond(accepted)


async def finish_execution(request: web.Request) -> web.Response:
    principal = _principal(request)
    execution_id = _execution_id(request)
    # An empty body means "derive everything": finishing must be as easy as possible for a harness.
    if not request.can_read_body or request.content_length == 0:
        req = ExecutionFinish()
    else:
        req = await _read(request, ExecutionFinish)
    started = time.perf_counter()
    async with _transaction(request) as conn:
        execution, _changed = await writer.finish_execution(conn, execution_id, req, request.app[INGEST_CONFIG],
                                                            _authorizer(principal))
    metrics.WRITE_LATENCY.labels("finish").observe(time.perf_counter() - started)
    return _respond(execution)


class JunitParams(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Query parameters of ``POST /v1/junit`` (the body is the XML report)."""

    project: ProjectKey
    name: Label | None = None
    environment: Short | None = None
    branch: Short | None = None
    commit: Short | None = None
    build_url: Url | None = None
    execution_id: uuid.UUID | None = None


_XML_TYPES = ("application/xml", "text/xml")


async def import_junit(request: web.Request) -> web.Response:
    principal = _principal(request)
    params = parse_query(JunitParams, request)
    authorize(principal, SCOPE, params.project)
    ctype = request.content_type
    if ctype not in _XML_TYPES and not ctype.endswith("+xml"):
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be application/xml (a JUnit XML report), got {ctype!r}")
    config = request.app[INGEST_CONFIG]
    body = await read_body(request, config.max_body_bytes)
    if not body.strip():
        raise ApiError(400, "empty_body", "request body is empty; send a JUnit XML report")
    if len(body) > _PARSE_IN_THREAD_BYTES:
        report = await asyncio.get_running_loop().run_in_executor(None, parse_junit, body)
    else:
        report = parse_junit(body)
    digest = hashlib.sha256(body).hexdigest()
    # Without an explicit id the execution id derives from the report and the parameters, so
    # uploading the same file again (a retried CI step) finds the first import instead of doubling it.
    execution_id = params.execution_id or uuid.uuid5(
        _JUNIT_NAMESPACE, _encoder.encode(msgspec.structs.replace(params, execution_id=None)).decode() + digest)
    now = writer.utcnow()
    start, end = report_window(report, now)
    create = ExecutionCreate(
        id=execution_id, project=params.project, name=params.name or (report.name or "")[:1024] or "JUnit import",
        environment=params.environment, branch=params.branch, commit=params.commit, build_url=params.build_url,
        started_at=report.started_at, attributes={"source": "junit", "report_sha256": digest},
    )
    _check_limits(create)  # branch/environment from the query, the start time from the report
    started = time.perf_counter()
    async with _transaction(request) as conn:
        execution, created = await writer.start_execution(conn, create, config, now=now, default_start=start)
        if not created:
            return _respond(JunitImported(execution=execution, accepted=0, duplicates=len(report.results),
                                          created=False))
        # The execution is new in this transaction and the report's keys are distinct (repeats
        # became attempts), so the optimistic COPY cannot meet a stored result.
        accepted = await writer.add_results(conn, execution_id, report.results, config, _authorizer(principal))
        execution, _ = await writer.finish_execution(conn, execution_id, ExecutionFinish(finished_at=end), config,
                                                     _authorizer(principal), now=now)
    metrics.WRITE_LATENCY.labels("junit").observe(time.perf_counter() - started)
    return _respond(JunitImported(execution=execution, accepted=accepted.accepted,
                                  duplicates=accepted.duplicates, created=True),
                    201, {"Location": f"/v1/executions/{execution_id}"})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/executions", create_execution)
    app.router.add_post("/v1/executions/{id}/results", add_results)
    app.router.add_post("/v1/executions/{id}/finish", finish_execution)
    app.router.add_post("/v1/junit", import_junit)
