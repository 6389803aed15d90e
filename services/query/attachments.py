"""Attachments on the read path: the download redirect and the lists shown with results.

``GET /v1/attachments/{id}?project=P`` answers 302 to a presigned GET valid for
``ATTACHMENT_URL_TTL_SECONDS``: the bytes (and Range requests, for video seeking) are served by
object storage. The URL signs the stored content type and a Content-Disposition that downloads
anything a browser could run (HTML, SVG, ...) instead of rendering it. An attachment of another
project, or one not yet stored, answers exactly as a missing one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
import msgspec
from aiohttp import web

from atas.common.app import add_openapi
from atas.common.attachments import download_path
from atas.common.attachments_openapi import query_fragment
from atas.common.engines import ENGINES
from atas.common.errors import ApiError, parse_query
from atas.common.schemas import ProjectKey
from atas.common.storage import STORAGE

_VIEW = "id, name, kind, content_type, size_bytes, sha256, test_id, attempt"


class DownloadParams(msgspec.Struct, forbid_unknown_fields=True):
    project: ProjectKey


async def download(request: web.Request) -> web.Response:
    # routes imports this module for the result lists; its auth helpers are looked up at call time.
    from .routes import _auth, _state

    _state(request)
    raw = request.match_info["id"]
    params = parse_query(DownloadParams, request)
    _auth(request, params.project)
    store = request.app.get(STORAGE)
    try:
        attachment_id = uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"attachment id must be a UUID, got {raw[:64]!r}",
                       field="id") from None
    async with request.app[ENGINES].pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT name, content_type, storage_key FROM attachments "
            "WHERE id = $1 AND project = $2 AND state = 'stored'", attachment_id, params.project)
    if row is None:
        raise ApiError(404, "not_found", f"attachment {attachment_id} does not exist")
    if store is None:
        raise ApiError(501, "attachments_disabled", "attachments are not configured on this server (STORAGE_URL)")
    url = await store.presign_get(row["storage_key"], filename=row["name"], content_type=row["content_type"],
                                  expires_s=store.settings.url_ttl_s, origin=f"{request.scheme}://{request.host}")
    # The redirect itself must not be cached past the URL's life, nor shared.
    return web.Response(status=302, headers={"Location": url, "Cache-Control": "private, no-store"})


def _item(row, project: str) -> dict:
    out = {"id": str(row["id"]), "name": row["name"], "kind": row["kind"], "content_type": row["content_type"],
           "size_bytes": row["size_bytes"], "download": download_path(row["id"], project)}
    if row["sha256"] is not None:
        out["sha256"] = row["sha256"].hex()
    return out


async def attachments_of(pool: asyncpg.Pool, project: str, execution_id: str | None,
                         rows: Sequence[asyncpg.Record]) -> list[list[dict] | None]:
    """Each result row's attachments: its ``uri`` references as stored, and the stored uploads it
    links by id or that were uploaded for its (test_id, attempt). One query for the page. Rows of
    several executions (test history) carry their own ``execution_id``; a result page passes it."""
    linked: set[str] = set()
    for r in rows:
        for a in r["attachments"] or []:
            if isinstance(a, dict) and a.get("id"):
                linked.add(a["id"])

    def key(r) -> tuple[str, str, int]:
        return str(execution_id or r["execution_id"]), r["test_id"], r["attempt"]

    keys = [key(r) for r in rows]
    found = []
    if keys:
        async with pool.acquire() as conn:
            found = await conn.fetch(
                f"SELECT {_VIEW}, execution_id FROM attachments WHERE project = $1 AND state = 'stored' AND "
                "((execution_id, test_id, attempt) IN (SELECT * FROM unnest($2::uuid[], $3::text[], $4::int[])) "
                "OR id = ANY($5::uuid[])) ORDER BY created_at, id",
                project, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], list(linked))
    by_id = {str(f["id"]): f for f in found}
    by_test: dict[tuple[str, str, int], list] = {}
    for f in found:
        by_test.setdefault((str(f["execution_id"]), f["test_id"], f["attempt"]), []).append(f)
    out: list[list[dict] | None] = []
    for r in rows:
        items: list[dict] = []
        seen: set[str] = set()
        for a in r["attachments"] or []:
            if isinstance(a, dict) and a.get("id"):
                f = by_id.get(a["id"])
                if f is not None and a["id"] not in seen:  # pending uploads are not shown
                    items.append(_item(f, project))
                    seen.add(a["id"])
            else:
                items.append(a)
        for f in by_test.get(key(r), []):
            if str(f["id"]) not in seen:
                items.append(_item(f, project))
                seen.add(str(f["id"]))
        out.append(items or None)
    return out


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/attachments/{id}", download, allow_head=False)
    add_openapi(app, query_fragment())
