"""The ingest part of ``/openapi.json``, generated from the same msgspec structs the handlers
decode with, so the document cannot drift from the implementation."""

from __future__ import annotations

import msgspec

from atas.common.schemas import schema_components

from .config import IngestConfig
from .routes import JunitParams

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["status", "code", "message"],
        "properties": {
            "status": {"type": "integer"},
            "code": {"type": "string"},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "JSON path of the offending field, e.g. results[3].status"},
            "details": {},
        },
    }},
}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(ref: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"},
             "description": "execution id"}


def _errors(*codes: int) -> dict:
    text = {400: "malformed body or parameter", 401: "no or invalid token",
            403: "token lacks ingest:write or the project", 404: "no such execution",
            409: "the id exists with a different body / a different final status / a result repeats a "
                 "stored (test_id, attempt) with a different body (`details.conflicts` lists them)",
            413: "body or batch too large", 415: "wrong Content-Type",
            422: "a field is invalid (the message and `field` name it)",
            503: "PostgreSQL unavailable; retry after Retry-After seconds"}
    return {str(c): _error(text[c]) for c in codes}


def _query_params() -> list[dict]:
    (ref,), components = msgspec.json.schema_components([JunitParams])
    schema = components["JunitParams"]
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema["properties"].items()]


def fragment(config: IngestConfig) -> dict:
    refs, components = schema_components()
    components["Error"] = _ERROR
    common = (400, 401, 403, 415, 422, 503)
    return {
        "tags": [{"name": "ingest", "description": "the write path harnesses report to"}],
        "components": {"schemas": components},
        "paths": {
            "/v1/executions": {"post": {
                "tags": ["ingest"], "operationId": "startExecution", "summary": "start an execution",
                "description": "Idempotent with a client-supplied `id`: the same request again answers 200 "
                               "with the existing execution; the same id with another body is a 409.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": refs["ExecutionCreate"]}}},
                "responses": {"201": _json(refs["Execution"], "created"),
                              "200": _json(refs["Execution"], "already existed (a retry)"),
                              **_errors(*common, 409, 413)},
            }},
            "/v1/executions/{id}/results": {"post": {
                "tags": ["ingest"], "operationId": "addResults", "summary": "add a batch of results",
                "description": f"1..{config.max_batch} results. A result already stored (same test_id and "
                               "attempt, or same id) with the same body counts as a duplicate and is not "
                               "stored again; with a different body the batch is refused with 409 naming "
                               "the conflicting results (report a rerun with the next `attempt`). Results "
                               "sent after finish are stored and counted; if the execution's status was "
                               "derived (finish without `status`) it is derived again, and a change emits "
                               "another `execution.finished` event.",
                "parameters": [_ID_PARAM],
                "requestBody": {"required": True, "content": {"application/json": {"schema": refs["ResultBatch"]}}},
                "responses": {"200": _json(refs["BatchAccepted"], "stored"),
                              **_errors(*common, 404, 409, 413)},
            }},
            "/v1/executions/{id}/finish": {"post": {
                "tags": ["ingest"], "operationId": "finishExecution", "summary": "finish an execution",
                "description": "Idempotent. Without `status` (the body may be empty) the status is derived "
                               "from the final attempt of each test: any test whose last attempt failed → "
                               "failed, else any whose last attempt errored → error, else passed (a test that "
                               "passed on retry does not fail the run). A derived status follows results that "
                               "arrive later; an explicit one never changes. Sending the derived status "
                               "explicitly pins it; a different one is a 409.",
                "parameters": [_ID_PARAM],
                "requestBody": {"required": False, "content": {"application/json": {"schema": refs["ExecutionFinish"]}}},
                "responses": {"200": _json(refs["Execution"], "finished (or already was)"),
                              **_errors(*common, 404, 409)},
            }},
            "/v1/junit": {"post": {
                "tags": ["ingest"], "operationId": "importJunit", "summary": "import a JUnit XML report",
                "description": "Surefire, pytest, jest-junit and Playwright reports become one finished "
                               "execution. Uploading the same report with the same parameters again is "
                               "harmless (200, `created: false`). DTD entities are refused.",
                "parameters": _query_params(),
                "requestBody": {"required": True, "content": {"application/xml": {"schema": {"type": "string"}}}},
                "responses": {"201": _json(refs["JunitImported"], "imported"),
                              "200": _json(refs["JunitImported"], "this report was imported before"),
                              **_errors(*common, 409, 413)},
            }},
        },
    }
