"""The attachment routes' part of ``/openapi.json`` (ingest adds the upload routes, query the
download), generated from the structs the handlers use."""

from __future__ import annotations

import msgspec

from .attachments import AttachmentCreate, AttachmentCreated, AttachmentView
from .schemas import PROJECT_KEY_PATTERN


def _schemas() -> tuple[dict, dict]:
    types = (AttachmentCreate, AttachmentCreated, AttachmentView)
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    return {t.__name__: r for t, r in zip(types, refs)}, components


def _err(text: str, schema: str = "Error") -> dict:
    """An error answer; ``schema`` names the service's error component (ingest ``Error``, query
    ``QueryError``): the fragments are merged into each service's own document."""
    return {"description": text,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


# What every authenticated route may answer before its own checks run.
def _common(schema: str = "Error", *, body: bool = False) -> dict:
    out = {"400": _err("malformed parameter (unknown, or not a UUID); `error.field` names it", schema),
           "401": _err("missing, invalid or expired token", schema),
           "403": _err("the token lacks the scope for this route", schema)}
    if body:
        out["415"] = _err("wrong Content-Type (JSON expected)", schema)
    return out


def _ok(text: str, ref: dict) -> dict:
    return {"description": text, "content": {"application/json": {"schema": ref}}}


def _uuid(description: str) -> dict:
    return {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"},
            "description": description}


def ingest_fragment() -> dict:
    refs, components = _schemas()
    return {
        "components": {"schemas": components},
        "paths": {
            "/v1/executions/{id}/attachments": {"post": {
                "tags": ["ingest"], "operationId": "createAttachment", "summary": "start uploading an attachment",
                "description": "Answers presigned upload URLs: `upload` (one PUT) or `parts` (multipart, files "
                               "larger than the part size). The harness sends the bytes there itself, then "
                               "calls `complete`. The same (test_id, attempt, name) again answers the same "
                               "attachment with fresh URLs.",
                "parameters": [_uuid("execution id")],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": refs["AttachmentCreate"]}}},
                "responses": {
                    **_common(body=True),
                    "201": _ok("created", refs["AttachmentCreated"]),
                    "200": _ok("existed (a retry)", refs["AttachmentCreated"]),
                    "404": _err("no such execution (or another project's)"),
                    "409": _err("same name, test and attempt with a different size, type or digest"),
                    "413": _err("size_bytes over ATTACHMENT_MAX_BYTES"),
                    "422": _err("a field is invalid: name, content_type, kind, sha256 (`field` says which)"),
                    "501": _err("attachments are not configured (STORAGE_URL)"),
                    "503": _err("object storage unreachable; retry after Retry-After seconds"),
                },
            }},
            "/v1/attachments/{id}/complete": {"post": {
                "tags": ["ingest"], "operationId": "completeAttachment", "summary": "check the upload and store it",
                "description": "Checks the object (size; the sha256 where declared), marks it stored and emits "
                               "`attachment.stored`. Repeating it answers the stored attachment.",
                "parameters": [_uuid("attachment id")],
                "responses": {
                    **_common(),
                    "200": _ok("stored", refs["AttachmentView"]),
                    "404": _err("no such attachment (or another project's)"),
                    "409": _err("nothing uploaded yet (`upload`) or parts missing (`parts`)"),
                    "422": _err("the object's size or sha256 differs from the declared one; it was deleted"),
                    "501": _err("attachments are not configured (STORAGE_URL)"),
                    "503": _err("object storage unreachable; retry after Retry-After seconds"),
                },
            }},
        },
    }


def query_fragment() -> dict:
    return {"paths": {"/v1/attachments/{id}": {"get": {
        "tags": ["query"], "operationId": "downloadAttachment", "summary": "download an attachment",
        "description": "302 to a presigned URL valid for ATTACHMENT_URL_TTL_SECONDS; scriptable types are "
                       "served with Content-Disposition: attachment. Range requests go to the store.",
        "parameters": [_uuid("attachment id"),
                       {"name": "project", "in": "query", "required": True,
                        "schema": {"type": "string", "pattern": PROJECT_KEY_PATTERN}}],
        "responses": {**_common("QueryError"),
                      "302": {"description": "redirect to the object"},
                      "404": _err("no such stored attachment in this project", "QueryError"),
                      "501": _err("attachments are not configured (STORAGE_URL)", "QueryError"),
                      "503": _err("object storage unreachable; retry after Retry-After seconds", "QueryError")},
    }}}}
