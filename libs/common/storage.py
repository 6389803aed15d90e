"""Object storage for attachments: settings, the interface both services use, and clean-up.

``STORAGE_URL`` picks the backend:

* ``s3://bucket/prefix`` (AWS S3 or any S3-compatible server via ``S3_ENDPOINT_URL``):
  :mod:`atas.common.storage_s3`, SigV4 presigned URLs signed by botocore;
* ``file:///path``: :mod:`atas.common.storage_file`, the local file system with URLs the service
  signs itself (HMAC, expiring) and serves on ``/v1/storage/...`` — ``atas dev``'s default.

``gs://`` and ``az://`` are recognised and refused with a message: GCS is reached through its
S3-compatible XML API (``s3://`` with ``S3_ENDPOINT_URL=https://storage.googleapis.com``).

Credentials never come from here: botocore's standard chain finds them (IRSA's web identity token
on EKS, instance profiles, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from a Secret where
nothing else works). Tests pass explicit keys for their S3Proxy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

# Types a harness may upload unless ATTACHMENT_CONTENT_TYPES says otherwise. `image/*` is every
# image type; SVG is an image that can carry script, so downloads are never rendered inline.
DEFAULT_CONTENT_TYPES = ("image/*", "video/mp4", "video/webm", "application/zip", "text/plain",
                         "application/json")
# Types a browser may render inline without running anything; everything else downloads.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "video/mp4", "video/webm"})
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (all but the last)
MAX_PARTS = 10_000  # S3's most parts in one upload


class StorageSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where attachments live. ``access_key_id``/``secret_access_key`` are only ever set by tests
    and the local stack (S3Proxy); deployments leave them to the provider's credential chain."""

    url: str  # STORAGE_URL as given
    scheme: str  # "s3" | "file"
    bucket: str = ""  # s3: the bucket
    prefix: str = ""  # s3: key prefix ("" or ending in "/"); file: the root folder
    region: str | None = None
    endpoint_url: str | None = None
    max_bytes: int = 2 * 1024 ** 3
    url_ttl_s: int = 300
    # Files larger than this are uploaded in parts of this size (one presigned URL per part).
    part_bytes: int = 16 * 1024 * 1024
    content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES
    # Objects up to this size are read back and hashed at completion when the harness gave a
    # sha256 (S3-compatible servers such as S3Proxy do not verify x-amz-checksum-sha256); larger
    # ones keep the harness's digest unverified. 0: never read objects back.
    verify_max_bytes: int = 64 * 1024 * 1024
    access_key_id: str | None = None
    secret_access_key: str | None = None
    signing_secret: str | None = None  # file://: the HMAC key of its URLs (the JWT secret by default)

    def allows(self, content_type: str) -> bool:
        major = content_type.split("/", 1)[0]
        return any(t == content_type or (t.endswith("/*") and t[:-2] == major) for t in self.content_types)


def parse_storage(e, *, mode: str, default_dir: str | None = None) -> StorageSettings | None:
    """Read the STORAGE_* / S3_* / ATTACHMENT_* variables with the :class:`EnvReader` ``e``.

    Unset ``STORAGE_URL``: attachments are off (``None``), except in ``atas dev`` where
    ``default_dir`` (under the data directory) is used."""
    raw = e.str("STORAGE_URL")
    max_bytes = e.int("ATTACHMENT_MAX_BYTES", 2 * 1024 ** 3, lo=1, hi=5 * 1024 ** 4)
    ttl = e.int("ATTACHMENT_URL_TTL_SECONDS", 300, lo=1, hi=7 * 24 * 3600)  # SigV4's longest is 7 days
    part = e.int("ATTACHMENT_PART_BYTES", 16 * 1024 * 1024, lo=MIN_PART_BYTES, hi=5 * 1024 ** 3)
    verify = e.int("ATTACHMENT_VERIFY_MAX_BYTES", 64 * 1024 * 1024, lo=0)
    types_raw = e.str("ATTACHMENT_CONTENT_TYPES")
    region, endpoint = e.str("S3_REGION"), e.str("S3_ENDPOINT_URL")
    types = DEFAULT_CONTENT_TYPES
    if types_raw:
        types = tuple(t.strip().lower() for t in types_raw.split(",") if t.strip())
        bad = [t for t in types if t.count("/") != 1 or t.startswith("/") or t.endswith("/")]
        if bad or not types:
            e.problems.append(f"ATTACHMENT_CONTENT_TYPES must be a comma-separated list of types such as "
                              f"image/*,video/mp4, got {types_raw!r}")
    if max_bytes > part * MAX_PARTS:
        e.problems.append(f"ATTACHMENT_MAX_BYTES ({max_bytes}) needs more than {MAX_PARTS} parts of "
                          f"ATTACHMENT_PART_BYTES ({part}): raise the part size")
    if endpoint:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            e.problems.append(f"S3_ENDPOINT_URL must be an http(s):// URL, got {endpoint!r}")
    if not raw:
        if mode != "dev" or default_dir is None:
            return None
        raw = "file://" + default_dir
    parts = urlsplit(raw)
    common = dict(url=raw, region=region, endpoint_url=endpoint, max_bytes=max_bytes, url_ttl_s=ttl,
                  part_bytes=part, content_types=types, verify_max_bytes=verify)
    if parts.scheme == "s3":
        if not parts.netloc:
            e.problems.append(f"STORAGE_URL must name a bucket, e.g. s3://atas-artifacts/prefix, got {raw!r}")
            return None
        prefix = parts.path.strip("/")
        return StorageSettings(scheme="s3", bucket=parts.netloc, prefix=prefix + "/" if prefix else "", **common)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            e.problems.append(f"STORAGE_URL file:// needs an absolute path, e.g. file:///var/lib/atas, got {raw!r}")
            return None
        return StorageSettings(scheme="file", prefix=parts.path, **common)
    if parts.scheme in ("gs", "az", "abfs"):
        e.problems.append(f"STORAGE_URL {parts.scheme}:// is not supported yet: use GCS's S3-compatible API "
                          "(s3://bucket with S3_ENDPOINT_URL=https://storage.googleapis.com) or an s3:// store")
        return None
    e.problems.append(f"STORAGE_URL must start with s3:// or file://, got {raw!r}")
    return None


class Upload(msgspec.Struct, frozen=True, kw_only=True):
    """How a harness sends bytes: one request (``method`` to ``url`` with ``headers``)."""

    method: str
    url: str
    headers: dict[str, str] = {}


class Head(msgspec.Struct, frozen=True):
    size: int
    content_type: str | None = None


class StorageUnavailable(Exception):
    """The store did not answer (network, 5xx, credentials): the caller answers 503."""


class ObjectStore(Protocol):
    """What ingest and query need from a store. ``origin`` is the public base URL of the request
    being served; only the file backend (whose URLs point at the service itself) uses it."""

    settings: StorageSettings

    def key(self, *parts: str) -> str: ...
    async def ping(self) -> None: ...
    async def presign_put(self, key: str, content_type: str, size: int, expires_s: int, origin: str) -> Upload: ...
    async def create_multipart(self, key: str, content_type: str) -> str: ...
    async def presign_part(self, key: str, upload_id: str, number: int, expires_s: int, origin: str) -> Upload: ...
    async def complete_multipart(self, key: str, upload_id: str, parts: int) -> None: ...
    async def head(self, key: str) -> Head | None: ...
    async def sha256(self, key: str) -> bytes: ...
    async def presign_get(self, key: str, *, filename: str, content_type: str, expires_s: int,
                          origin: str) -> str: ...
    async def delete(self, keys: list[str]) -> None: ...
    async def delete_prefix(self, prefix: str) -> int: ...
    async def open(self) -> None: ...
    async def close(self) -> None: ...


class IncompleteUpload(Exception):
    """A multipart completion found parts missing; the message says which."""


STORAGE = web.AppKey("atas_storage", object)  # ObjectStore, or None when STORAGE_URL is unset


def open_store(settings: StorageSettings, *, jwt_secret: str) -> ObjectStore:
    if settings.scheme == "file":
        from .storage_file import FileStore

        return FileStore(settings, secret=settings.signing_secret or jwt_secret)
    from .storage_s3 import S3Store

    return S3Store(settings)


def install_storage(app: web.Application, settings: StorageSettings | None, *, jwt_secret: str) -> None:
    """Open the store for the app's lifetime (once, however many services share the app)."""
    if STORAGE in app:
        return
    store = open_store(settings, jwt_secret=jwt_secret) if settings is not None else None
    app[STORAGE] = store
    if store is None:
        return
    if settings.scheme == "file":
        from .storage_file import add_routes

        add_routes(app, store)

    async def ctx(_app: web.Application):
        # Build the client now, so the first upload does not pay for it (no network: a store that
        # is down does not stop the service from starting).
        await store.open()
        yield
        await store.close()

    app.cleanup_ctx.append(ctx)


class Availability:
    """Whether the store answered recently, so that creating an attachment can answer 503 at once
    when it does not instead of handing out URLs nobody can use. One probe (``ping``) at most per
    ``recheck_s`` while it is down; a success is trusted for ``trust_s``."""

    def __init__(self, store: ObjectStore, *, trust_s: float = 5.0, recheck_s: float = 1.0, timeout_s: float = 2.0):
        self.store, self.trust_s, self.recheck_s, self.timeout_s = store, trust_s, recheck_s, timeout_s
        self._ok_at = 0.0
        self._failed_at = 0.0
        self._error = ""
        self._lock = asyncio.Lock()

    def mark_ok(self) -> None:
        self._ok_at = time.monotonic()

    async def check(self) -> None:
        now = time.monotonic()
        if now - self._ok_at < self.trust_s:
            return
        async with self._lock:
            now = time.monotonic()
            if now - self._ok_at < self.trust_s:
                return
            if now - self._failed_at < self.recheck_s:
                raise StorageUnavailable(self._error)
            try:
                await asyncio.wait_for(self.store.ping(), self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failure means "not usable now"
                self._failed_at, self._error = time.monotonic(), f"{type(exc).__name__}: {exc}"[:300]
                raise StorageUnavailable(self._error) from exc
            self._ok_at = time.monotonic()


def content_disposition(filename: str, content_type: str) -> str:
    """``inline`` only for types a browser renders without running anything (no stored XSS)."""
    from urllib.parse import quote

    kind = "inline" if content_type in INLINE_TYPES else "attachment"
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def delete_execution_objects(store: ObjectStore, project: str, execution_id: str) -> int:
    """Delete every object of one execution (``project/execution/``): for retention and for
    deleting an execution. Returns how many objects were removed; idempotent. Call it *before*
    deleting the rows (the keys are derivable, so a crash between the two leaves no orphan that
    a second run would not find)."""
    return await store.delete_prefix(store.key(project, str(execution_id)) + "/")


def settings_from_env(env: Mapping[str, str], *, mode: str = "serve") -> StorageSettings | None:
    """For tools outside the services (retention): parse just the storage variables, e.g.
    ``store = open_store(settings_from_env(os.environ), jwt_secret=...)``, then
    :func:`delete_execution_objects` per execution, then ``await store.close()``."""
    from .config import ConfigError, EnvReader

    e = EnvReader(env)
    result = parse_storage(e, mode=mode)
    if e.problems:
        raise ConfigError(e.problems)
    return result
