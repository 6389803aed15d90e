"""``attach``: upload a file as an attachment of an execution (or of one test's attempt).

create (``POST /v1/executions/{id}/attachments``) → PUT the bytes straight to object storage (one
request, or one per part for large files) → complete. Every step is safe to repeat: a create with
the same (test_id, attempt, name) answers the same attachment with fresh URLs, a re-PUT replaces
the same object, a repeated completion answers the stored attachment. Storage answering 5xx or a
dropped connection is retried with back-off; an expired URL is replaced by creating again.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from atas.common.attachments import AttachmentCreated, AttachmentView

if TYPE_CHECKING:
    from .client import AsyncClient

_KIND_BY_MAJOR = {"image": "screenshot", "video": "video", "text": "log"}
# What test tools write, where the platform's MIME table may know nothing (``.log`` is unknown to
# Python's, so a log would otherwise go as application/octet-stream and be refused).
_TYPES = {".log": "text/plain", ".txt": "text/plain", ".out": "text/plain", ".webm": "video/webm",
          ".mp4": "video/mp4", ".zip": "application/zip", ".json": "application/json", ".png": "image/png"}
Progress = Callable[[int, int], None]  # (bytes sent so far, total)


def guess(path: Path, content_type: str | None, kind: str | None) -> tuple[str, str]:
    ctype = (content_type or _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
             or "application/octet-stream")
    if ctype == "application/zip" and kind is None:
        return ctype, "trace"  # Playwright traces are zip files
    return ctype, kind or _KIND_BY_MAJOR.get(ctype.split("/")[0], "other")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


class _Expired(Exception):
    pass


async def _put(client: "AsyncClient", method: str, url: str, headers: dict[str, str], data: bytes) -> None:
    """One upload request, retried on 5xx and connection errors (the URL is the credential: no token)."""
    from .client import AtasError

    session = await client._http()
    attempt = 0
    while True:
        try:
            # A stream, not raw bytes (which block the loop while sent); new per attempt.
            async with session.request(method, url, data=io.BytesIO(data), headers=headers) as resp:
                text = await resp.read()
                if resp.status < 300:
                    return
                if resp.status == 403:
                    raise _Expired(text[:300].decode(errors="replace"))
                if resp.status < 500 or attempt >= client.retries:
                    raise AtasError(resp.status, "upload_failed", text[:500].decode(errors="replace"))
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            if attempt >= client.retries:
                raise AtasError(0, "unreachable", f"upload failed after {attempt + 1} attempts: {exc}") from exc
        await asyncio.sleep(client._delay(attempt, None))
        attempt += 1


async def attach(client: "AsyncClient", execution_id: Any, path: str | Path, *, test_id: str | None = None,
                 attempt: int | None = None, kind: str | None = None, name: str | None = None,
                 content_type: str | None = None, progress: Progress | None = None) -> AttachmentView:
    path = Path(path)
    size = path.stat().st_size
    ctype, kind = guess(path, content_type, kind)
    body: dict[str, Any] = {"name": name or path.name, "content_type": ctype, "size_bytes": size, "kind": kind,
                            "sha256": await asyncio.to_thread(file_sha256, path)}
    if test_id is not None:
        body["test_id"] = test_id
    if attempt is not None:
        body["attempt"] = attempt
    route = f"/v1/executions/{execution_id}/attachments"
    for round_ in range(3):  # a URL that expired mid-upload: create again for fresh ones
        created = await client._call("POST", route, AttachmentCreated, json=body)
        if created.state == "stored":
            break
        try:
            sent = 0
            if created.upload is not None:
                data = await asyncio.to_thread(_read, path, 0, size)
                await _put(client, created.upload.method, created.upload.url, created.upload.headers, data)
                sent = size
                if progress:
                    progress(sent, size)
            else:
                for part in created.parts or []:
                    data = await asyncio.to_thread(_read, path, sent, part.size_bytes)
                    await _put(client, part.method, part.url, part.headers, data)
                    sent += part.size_bytes
                    if progress:
                        progress(sent, size)
        except _Expired:
            if round_ == 2:
                raise
            continue
        break
    return await client._call("POST", created.complete, AttachmentView)
