"""The query service's OpenAPI fragment, generated from the response structs it encodes."""

from __future__ import annotations

from typing import Any

import msgspec

from atas.common.schemas import PROJECT_KEY_PATTERN

from . import schemas as s

_TAG = "query"
PREFIX = "Query"


def _param(name: str, description: str, *, required: bool = False, schema: dict | None = None,
           where: str = "query") -> dict:
    return {"name": name, "in": where, "required": required, "description": description,
            "schema": schema or {"type": "string"}}


PROJECT = _param("project", "Project key; the token must grant `query:read` on it.", required=True,
                 schema={"type": "string", "pattern": PROJECT_KEY_PATTERN})
FROM = _param("from", "Start of the range, ISO-8601 (UTC when no offset), 1970..2200. Default: `to` "
                      "minus QUERY_DEFAULT_RANGE_DAYS.", schema={"type": "string", "format": "date-time"})
TO = _param("to", "End of the range (exclusive), ISO-8601, 1970..2200. Default: the next whole minute.",
            schema={"type": "string", "format": "date-time"})
ENV = _param("environment", "Only executions of this environment.")
BRANCH = _param("branch", "Only executions of this branch.")
CURSOR = _param("cursor", "Opaque cursor from `next_cursor` (or the `Link` header) of the previous page.")
LIMIT = _param("limit", "Page size, 1..200.", schema={"type": "integer", "minimum": 1, "maximum": 200})
OWNER = _param("project", "Optional: the execution's project (cached answers). Without it the token's "
                         "projects decide.", schema={"type": "string", "pattern": PROJECT_KEY_PATTERN})
EXEC_ID = _param("id", "Execution id (UUID).", required=True, where="path",
                 schema={"type": "string", "format": "uuid"})

_ERROR_BODY = {"application/json": {"schema": {"$ref": f"#/components/schemas/{PREFIX}Error"}}}
_ERRORS = {
    "400": {"description": "Invalid parameter (unknown parameter, bad date or one outside 1970..2200, `from` "
                           "after `to`, range too large, bad cursor, unknown bucket, malformed project key, "
                           "control characters); `error.field` names it", "content": _ERROR_BODY},
    "401": {"description": "Missing, invalid or expired token", "content": _ERROR_BODY},
    "403": {"description": "Token lacks `query:read` on the project", "content": _ERROR_BODY},
    "503": {"description": "PostgreSQL not connected yet; retry after Retry-After seconds", "content": _ERROR_BODY},
}
_NOT_FOUND = {"404": {"description": "No such execution, or one the token may not read (the same answer: "
                                     "another project's ids are not confirmed)", "content": _ERROR_BODY}}
_CACHE_HEADERS = {
    "ETag": {"schema": {"type": "string"}, "description": "Send it back in If-None-Match to get a 304."},
    "X-Cache": {"schema": {"type": "string", "enum": ["hit", "miss", "bypass"]},
                "description": "hit: served from cache; miss: computed now (always when the view's TTL is 0); "
                               "bypass: cache unavailable or refused this entry, not cached."},
}


def _op(summary: str, params: list[dict], schema: str, *, cached: bool, extra: dict | None = None,
        errors: dict | None = None) -> dict:
    headers = dict(_CACHE_HEADERS) if cached else {"ETag": _CACHE_HEADERS["ETag"]}
    if extra:
        headers.update(extra)
    return {"get": {
        "tags": [_TAG], "summary": summary, "parameters": params,
        "responses": {
            "200": {"description": "OK", "headers": headers,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{PREFIX}{schema}"}}}},
            "304": {"description": "Not modified (If-None-Match matched the ETag)"},
            **_ERRORS,
            **(errors or {}),
        },
    }}


_LINK = {"Link": {"schema": {"type": "string"}, "description": 'The next page: `<url>; rel="next"`.'}}


def fragment() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [s.Overview, s.Trends, s.ExecutionPage, s.Execution, s.ResultPage, s.TestList, s.FailingTest,
         s.SlowTest, s.FlakyTest, s.History],
        ref_template="#/components/schemas/{name}",
    )
    # Prefixed, so that the components of ingest and stream (merged into one document by `atas dev`)
    # never overwrite these.
    raw = msgspec.json.encode(components).decode()
    for name in sorted(components, key=len, reverse=True):
        raw = raw.replace(f'"#/components/schemas/{name}"', f'"#/components/schemas/{PREFIX}{name}"')
    components = {PREFIX + k: v for k, v in msgspec.json.decode(raw).items()}
    components[PREFIX + "Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "code", "message"], "properties": {
            "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"},
            "field": {"type": "string"}, "details": {}}}}}
    bucket = _param("bucket", "Bucket width.", schema={"type": "string", "enum": ["hour", "day", "week"],
                                                        "default": "day"})
    top = _param("limit", "How many tests, 1..200 (default 20; overview: 10).",
                 schema={"type": "integer", "minimum": 1, "maximum": 200})
    rng = [PROJECT, FROM, TO, ENV, BRANCH]
    status = _param("status", "Filter by execution status.",
                    schema={"type": "string", "enum": ["running", "passed", "failed", "error", "cancelled"]})
    result_status = _param("status", "Filter by result status (repeat or comma-separate for several).")
    test_id = _param("test_id", "Test id (URL-encoded; no NUL).", required=True, where="path")
    day_note = " Per-test aggregates cover whole UTC days: the range is widened and echoed in `range`."
    return {
        "tags": [{"name": _TAG, "description": "Dashboard reads: aggregations, lists and histories"}],
        "paths": {
            "/v1/dashboard/overview": _op("Executions and results by status, pass rate, duration mean and "
                                          "p95, top failing tests." + day_note, [*rng, top], "Overview",
                                          cached=True),
            "/v1/trends": _op("Per bucket: executions, results by status, pass rate, duration p50/p95.",
                              [*rng, bucket], "Trends", cached=True),
            "/v1/executions": _op("Recent executions, newest first, keyset-paginated (first pages cached).",
                                  [*rng, status, CURSOR, LIMIT], "ExecutionPage", cached=True, extra=_LINK),
            "/v1/executions/{id}": _op("Status, counters and timing of one execution.", [EXEC_ID, OWNER],
                                       "Execution", cached=True, errors=_NOT_FOUND),
            "/v1/executions/{id}/results": _op("Results of one execution by (test_id, attempt), with the "
                                               "`attributes` the harness sent.",
                                               [EXEC_ID, OWNER, result_status, CURSOR, LIMIT], "ResultPage",
                                               cached=False, extra=_LINK, errors=_NOT_FOUND),
            "/v1/tests/failing": _op("Tests with the most failed/error attempts." + day_note, [*rng, top],
                                     "TestList", cached=True),
            "/v1/tests/slowest": _op("Tests with the highest mean duration." + day_note, [*rng, top],
                                     "TestList", cached=True),
            "/v1/tests/flaky": _op("Tests that passed and failed on the same commit, or passed on a retry."
                                   + day_note, [*rng, top], "TestList", cached=True),
            "/v1/tests/{test_id}/history": _op("Every attempt of one test, newest first.",
                                               [test_id, *rng, CURSOR, LIMIT], "History", cached=False,
                                               extra=_LINK),
        },
        "components": {"schemas": components},
    }
