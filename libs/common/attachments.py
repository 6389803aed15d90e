"""Request and response bodies of the attachment API, shared by ingest, query and the client."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .storage import Upload

AttachmentKind = Literal["screenshot", "video", "trace", "log", "other"]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{64}$(?!\n)", description="hex SHA-256 of the bytes")]


class AttachmentCreate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """``POST /v1/executions/{id}/attachments``. ``(test_id, attempt, name)`` identifies it within
    the execution: sending the same again answers the same attachment (with fresh URLs)."""

    name: Annotated[str, Meta(min_length=1, max_length=255, description="file name, no path separators")]
    content_type: Annotated[str, Meta(min_length=3, max_length=255)]
    size_bytes: Annotated[int, Meta(ge=0)]
    kind: AttachmentKind = "other"
    sha256: Sha256Hex | None = None
    test_id: Annotated[str, Meta(min_length=1, max_length=1024)] | None = None
    attempt: Annotated[int, Meta(ge=1, le=10_000)] | None = None


class Part(msgspec.Struct, frozen=True, kw_only=True):
    number: int
    method: str
    url: str
    size_bytes: int
    headers: dict[str, str] = {}


class AttachmentCreated(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How to upload: ``upload`` (one request) or ``parts`` (each part's bytes, in order, to its
    URL), then ``POST`` to ``complete``. ``state`` is ``stored`` when it was already completed."""

    id: uuid.UUID
    execution_id: uuid.UUID
    state: Literal["pending", "stored"]
    name: str
    kind: str
    content_type: str
    size_bytes: int
    complete: str
    download: str
    expires_at: datetime | None = None
    upload: Upload | None = None
    part_bytes: int | None = None
    parts: list[Part] | None = None


class AttachmentView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A stored attachment as result views and the completion call show it."""

    id: uuid.UUID
    name: str
    kind: str
    content_type: str
    size_bytes: int
    download: str
    state: str = "stored"
    sha256: str | None = None
    test_id: str | None = None
    attempt: int | None = None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file name, or None. Names reach Content-Disposition headers and the
    harness's disk when downloaded: no separators, no control characters, no dot names."""
    if "/" in name or "\\" in name:
        return "`name` must be a file name without path separators (/ or \\)"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in name):
        return "`name` must not contain control characters"
    if name.strip() in (".", "..", ""):
        return "`name` must be a file name, not '.', '..' or blank"
    if len(name.encode()) > 255:
        return "`name` is longer than 255 bytes (UTF-8)"
    return None


def download_path(attachment_id, project: str) -> str:
    return f"/v1/attachments/{attachment_id}?project={project}"
