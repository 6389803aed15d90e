"""Attachment uploads: create (presigned URLs), complete (check the object, mark it stored, emit
``attachment.stored``). The bytes go from the harness straight to object storage.

Storage calls never run inside a database transaction: a slow store must not hold row locks. The
row is written pending first (or found: a retried create), the store is asked, and completion flips
``pending`` → ``stored`` in a short transaction that also appends the event to the outbox.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from datetime import timedelta

from aiohttp import web
from prometheus_client import Counter, Histogram

from atas.common.app import add_openapi
from atas.common.attachments import (
    AttachmentCreate, AttachmentCreated, AttachmentView, Part, download_path, name_problem,
)
from atas.common.attachments_openapi import ingest_fragment
from atas.common.engines import ENGINES
from atas.common.errors import ApiError, check_json_content_type, decode_json, read_body
from atas.common.events import AttachmentStored, new_event
from atas.common.storage import STORAGE, Availability, IncompleteUpload, StorageUnavailable

from . import writer
from .routes import SCOPE, _execution_id, _principal, _respond, _transaction

CREATED = Counter("atas_attachments_created_total", "Attachments created (upload URLs handed out)", ["mode"])
COMPLETED = Counter("atas_attachments_completed_total", "Attachments verified and stored")
FAILED = Counter("atas_attachments_failed_total", "Attachment creations or completions refused, by reason",
                 ["reason"])
BYTES_STORED = Counter("atas_attachments_bytes_stored_total", "Bytes of attachments stored")
PRESIGN_SECONDS = Histogram("atas_attachments_presign_seconds", "Time to answer a create (presigning included)",
                            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1))
AVAILABILITY = web.AppKey("atas_storage_availability", object)  # Availability, or None

_COLUMNS = ("id, project, execution_id, test_id, attempt, name, kind, content_type, size_bytes, sha256, "
            "sha256_verified, storage_key, upload_id, parts, part_bytes, state")
_FIND = f"""SELECT {_COLUMNS} FROM attachments
WHERE execution_id = $1 AND coalesce(test_id, '') = coalesce($2, '') AND coalesce(attempt, 0) = coalesce($3, 0)
  AND name = $4"""
_INSERT = f"""INSERT INTO attachments (id, project, execution_id, test_id, attempt, name, kind, content_type,
                         size_bytes, sha256, storage_key, upload_id, parts, part_bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT DO NOTHING RETURNING {_COLUMNS}"""
_STORE = f"""UPDATE attachments SET state = 'stored', stored_at = now(), sha256_verified = $2
WHERE id = $1 AND state = 'pending' RETURNING {_COLUMNS}"""
_NEXT_SEQ = "UPDATE executions SET last_seq = last_seq + 1, updated_at = now() WHERE id = $1 RETURNING last_seq"


_UNKNOWN = re.compile(r"unknown field `([^`]*)`")


def _fail(reason: str, status: int, code: str, message: str, **kw) -> ApiError:
    FAILED.labels(reason).inc()
    return ApiError(status, code, message, **kw)


def _store(request: web.Request):
    store = request.app.get(STORAGE)
    if store is None:
        raise ApiError(501, "attachments_disabled", "attachments are not configured on this server (STORAGE_URL)")
    return store


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _check(req: AttachmentCreate, settings) -> None:
    problem = name_problem(req.name)
    if problem:
        raise _fail("name", 422, "invalid_field", problem, field="name")
    ctype = req.content_type.strip().lower()
    if not settings.allows(ctype) or ";" in ctype:
        raise _fail("content_type", 422, "content_type_not_allowed",
                    f"`content_type` {req.content_type!r} is not allowed; allowed: {', '.join(settings.content_types)}",
                    field="content_type", details={"allowed": list(settings.content_types)})
    if req.size_bytes > settings.max_bytes:
        raise _fail("size", 413, "attachment_too_large",
                    f"`size_bytes` {req.size_bytes} exceeds the limit of {settings.max_bytes} bytes",
                    field="size_bytes", details={"max_bytes": settings.max_bytes})
    if req.attempt is not None and req.test_id is None:
        raise _fail("attempt", 422, "invalid_field", "`attempt` needs `test_id`", field="attempt")


def _view(row, project: str) -> AttachmentView:
    return AttachmentView(id=row["id"], name=row["name"], kind=row["kind"], content_type=row["content_type"],
                          size_bytes=row["size_bytes"], download=download_path(row["id"], project),
                          state=row["state"], sha256=row["sha256"].hex() if row["sha256"] else None,
                          test_id=row["test_id"], attempt=row["attempt"])


async def create_attachment(request: web.Request) -> web.Response:
    principal = _principal(request)
    execution_id = _execution_id(request)
    store = _store(request)
    settings = store.settings
    check_json_content_type(request)
    try:
        req = decode_json(await read_body(request, 64 * 1024), AttachmentCreate)
    except ApiError as exc:
        unknown = _UNKNOWN.search(exc.message)
        if exc.field is None and unknown:  # name it: e.g. a client trying to choose the object `key`
            exc.field = unknown.group(1)
        FAILED.labels("body").inc()
        raise
    _check(req, settings)
    started = time.perf_counter()
    ctype = req.content_type.strip().lower()
    attempt = req.attempt if req.attempt is not None or req.test_id is None else 1
    try:
        await request.app[AVAILABILITY].check()
    except StorageUnavailable as exc:
        raise _fail("storage_down", 503, "storage_unavailable", f"object storage is not reachable: {exc}",
                    headers={"Retry-After": "5"}) from None
    sha = bytes.fromhex(req.sha256) if req.sha256 else None
    multipart = req.size_bytes > settings.part_bytes
    attachment_id = uuid.uuid4()

    async def insert(conn, project: str, upload_id: str | None) -> tuple:
        """(row, created): the new row, or the one a concurrent create of the same attachment wrote."""
        key = store.key(project, str(execution_id), attachment_id.hex)
        parts = math.ceil(req.size_bytes / settings.part_bytes) if upload_id else None
        # The part size is recorded: a retried create after ATTACHMENT_PART_BYTES changed must hand
        # out the same slices as the first.
        row = await conn.fetchrow(_INSERT, attachment_id, project, execution_id, req.test_id, attempt, req.name,
                                  req.kind, ctype, req.size_bytes, sha, key, upload_id, parts,
                                  settings.part_bytes if upload_id else None)
        if row is None:
            return await conn.fetchrow(_FIND, execution_id, req.test_id, attempt, req.name), False
        return row, True

    created = False
    # One transaction for a single-PUT upload; a multipart one needs the store's upload id first,
    # which is never asked for inside a transaction.
    async with _transaction(request) as conn:
        execution = await conn.fetchrow("SELECT project FROM executions WHERE id = $1", execution_id)
        if execution is None or not principal.can(SCOPE, execution["project"]):
            # A foreign project's execution answers exactly as a missing one.
            raise _fail("execution", 404, "not_found", f"execution {execution_id} does not exist", field="id")
        project = execution["project"]
        row = await conn.fetchrow(_FIND, execution_id, req.test_id, attempt, req.name)
        if row is None and not multipart:
            row, created = await insert(conn, project, None)
    if row is None:
        try:
            upload_id = await store.create_multipart(store.key(project, str(execution_id), attachment_id.hex), ctype)
        except StorageUnavailable as exc:
            raise _fail("storage_down", 503, "storage_unavailable", f"object storage is not reachable: {exc}",
                        headers={"Retry-After": "5"}) from None
        async with _transaction(request) as conn:
            row, created = await insert(conn, project, upload_id)
    for field, mine, theirs in (("content_type", ctype, row["content_type"]), ("size_bytes", req.size_bytes,
                                row["size_bytes"]), ("kind", req.kind, row["kind"]), ("sha256", sha, row["sha256"])):
        if mine != theirs:
            raise _fail("conflict", 409, "conflict",
                        f"attachment {req.name!r} of this test and attempt already exists with a different "
                        f"`{field}`; use another name", field=field)
    body = AttachmentCreated(
        id=row["id"], execution_id=execution_id, state=row["state"], name=row["name"], kind=row["kind"],
        content_type=row["content_type"], size_bytes=row["size_bytes"],
        complete=f"/v1/attachments/{row['id']}/complete", download=download_path(row["id"], project))
    if row["state"] == "pending":
        ttl, origin = settings.url_ttl_s, _origin(request)
        body.expires_at = writer.utcnow() + timedelta(seconds=ttl)
        if row["upload_id"]:
            part_bytes = body.part_bytes = row["part_bytes"]
            body.parts = []
            for n in range(1, row["parts"] + 1):
                up = await store.presign_part(row["storage_key"], row["upload_id"], n, ttl, origin)
                size = min(part_bytes, row["size_bytes"] - (n - 1) * part_bytes)
                body.parts.append(Part(number=n, method=up.method, url=up.url, headers=up.headers, size_bytes=size))
        else:
            body.upload = await store.presign_put(row["storage_key"], row["content_type"], row["size_bytes"], ttl,
                                                  origin)
    PRESIGN_SECONDS.observe(time.perf_counter() - started)
    if created:
        CREATED.labels("multipart" if row["upload_id"] else "single").inc()
    return _respond(body, 201 if created else 200, {"Location": body.download})


def _attachment_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"attachment id must be a UUID, got {raw[:64]!r}",
                       field="id") from None


async def complete_attachment(request: web.Request) -> web.Response:
    principal = _principal(request)
    attachment_id = _attachment_id(request)
    store = _store(request)
    pool = request.app[ENGINES].pool
    if pool is None:
        raise ApiError(503, "unavailable", "the database is not ready; retry later", headers={"Retry-After": "5"})
    # One statement, no transaction: the state change below re-checks `pending` under its own.
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM attachments WHERE id = $1", attachment_id)
    if row is None or not principal.can(SCOPE, row["project"]):
        raise ApiError(404, "not_found", f"attachment {attachment_id} does not exist", field="id")
    project = row["project"]
    if row["state"] == "stored":  # a retried completion
        return _respond(_view(row, project))
    key = row["storage_key"]
    try:
        if row["upload_id"]:
            try:
                await store.complete_multipart(key, row["upload_id"], row["parts"])
            except IncompleteUpload as exc:
                # Completed before, and the answer was lost: the object is there.
                if await store.head(key) is None:
                    raise _fail("incomplete", 409, "upload_incomplete", f"the upload is not complete: {exc}",
                                field="parts") from None
        head = await store.head(key)
        if head is None:
            raise _fail("missing", 409, "object_missing",
                        "nothing was uploaded for this attachment yet: PUT the bytes to the upload URL first",
                        field="upload")
        if head.size != row["size_bytes"]:
            await store.delete([key])
            raise _fail("size", 422, "size_mismatch",
                        f"the uploaded object has {head.size} bytes, `size_bytes` said {row['size_bytes']}; "
                        "it was deleted: create the attachment again and upload the right file",
                        field="size_bytes")
        verified = False
        if row["sha256"] is not None and head.size <= store.settings.verify_max_bytes:
            if await store.sha256(key) != row["sha256"]:
                await store.delete([key])
                raise _fail("sha256", 422, "sha256_mismatch",
                            "the uploaded bytes do not have the declared `sha256`; the object was deleted",
                            field="sha256")
            verified = True
    except StorageUnavailable as exc:
        raise _fail("storage_down", 503, "storage_unavailable", f"object storage is not reachable: {exc}",
                    headers={"Retry-After": "5"}) from None
    request.app[AVAILABILITY].mark_ok()
    async with _transaction(request) as conn:
        stored = await conn.fetchrow(_STORE, attachment_id, verified)
        if stored is None:  # a concurrent completion won
            stored = await conn.fetchrow(f"SELECT {_COLUMNS} FROM attachments WHERE id = $1", attachment_id)
            return _respond(_view(stored, project))
        seq = await conn.fetchval(_NEXT_SEQ, row["execution_id"])
        view = _view(stored, project)
        event = new_event("attachment.stored", project=project, execution_id=str(row["execution_id"]), seq=seq,
                          data=AttachmentStored(id=str(view.id), name=view.name, kind=view.kind,
                                                content_type=view.content_type, size_bytes=view.size_bytes,
                                                download=view.download, test_id=view.test_id, attempt=view.attempt))
        await writer.append_events(conn, [event])
    COMPLETED.inc()
    BYTES_STORED.inc(row["size_bytes"])
    return _respond(view)


def setup(app: web.Application) -> None:
    """The attachment routes; the store is opened by :func:`install_storage` (``STORAGE_URL``)."""
    app[AVAILABILITY] = Availability(app[STORAGE]) if app[STORAGE] is not None else None
    app.router.add_post("/v1/executions/{id}/attachments", create_attachment)
    app.router.add_post("/v1/attachments/{id}/complete", complete_attachment)
    add_openapi(app, ingest_fragment())
