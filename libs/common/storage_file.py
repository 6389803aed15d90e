"""A file-system store for ``atas dev``: the same upload and download flow as S3, no cloud account.

Objects live under the ``file://`` root. The service signs its own URLs: an HMAC-SHA256 over the
method, key, expiry and (for parts) upload id and part number, with the process's secret; the
routes ``PUT/GET /v1/storage/{key}`` verify the signature and the expiry before touching a file.
A harness therefore PUTs to the URL it was given and never needs a token for the bytes, exactly as
with a presigned S3 URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import shutil
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from aiohttp import web

from .errors import ApiError
from .storage import Head, IncompleteUpload, StorageSettings, Upload, content_disposition

_CHUNK = 1024 * 1024


class FileStore:
    def __init__(self, settings: StorageSettings, *, secret: str):
        self.settings = settings
        self.root = Path(settings.prefix)
        self._secret = hashlib.sha256(b"atas-file-storage\0" + secret.encode()).digest()

    def key(self, *parts: str) -> str:
        return "/".join(parts)

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ApiError(400, "invalid_key", "bad object key")
        return path

    # ------------------------------------------------------------------ signing
    def _sig(self, *fields: str) -> str:
        mac = hmac.new(self._secret, "\n".join(fields).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def _url(self, origin: str, method: str, key: str, expires_s: int, extra: dict[str, str]) -> str:
        exp = str(int(time.time()) + expires_s)
        fields = dict(sorted(extra.items()))
        sig = self._sig(method, key, exp, *(f"{k}={v}" for k, v in fields.items()))
        return f"{origin}/v1/storage/{quote(key)}?" + urlencode({**fields, "exp": exp, "sig": sig})

    def verify(self, method: str, key: str, query) -> dict[str, str]:
        exp, sig = query.get("exp", ""), query.get("sig", "")
        extra = {k: v for k, v in sorted(query.items()) if k not in ("exp", "sig")}
        good = self._sig(method, key, exp, *(f"{k}={v}" for k, v in extra.items()))
        if not hmac.compare_digest(sig, good):
            raise ApiError(403, "signature_mismatch", "the URL's signature does not match")
        if not exp.isdigit() or int(exp) < time.time():
            raise ApiError(403, "url_expired", "the URL has expired; ask ATAS for a new one")
        return extra

    # ------------------------------------------------------------------ ObjectStore
    async def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise OSError(f"{self.root} is not writable")

    async def presign_put(self, key, content_type, size, expires_s, origin) -> Upload:
        url = self._url(origin, "PUT", key, expires_s, {"ct": content_type})
        return Upload(method="PUT", url=url, headers={"Content-Type": content_type})

    async def create_multipart(self, key, content_type) -> str:
        return secrets.token_hex(16)

    async def presign_part(self, key, upload_id, number, expires_s, origin) -> Upload:
        return Upload(method="PUT", url=self._url(origin, "PUT", key, expires_s,
                                                  {"uploadId": upload_id, "partNumber": str(number)}))

    def _parts_dir(self, key: str, upload_id: str) -> Path:
        return self.path(key).with_name(self.path(key).name + ".uploads") / upload_id

    async def complete_multipart(self, key, upload_id, parts) -> None:
        folder = self._parts_dir(key, upload_id)
        missing = [n for n in range(1, parts + 1) if not (folder / str(n)).exists()]
        if missing:
            raise IncompleteUpload(f"{len(missing)} of {parts} parts are missing (first: part {missing[0]})")

        def join() -> None:
            target = self.path(key)
            tmp = target.with_name(target.name + ".joining")
            with open(tmp, "wb") as out:
                for n in range(1, parts + 1):
                    with open(folder / str(n), "rb") as part:
                        shutil.copyfileobj(part, out, _CHUNK)
            tmp.replace(target)
            shutil.rmtree(folder.parent, ignore_errors=True)

        await asyncio.to_thread(join)

    async def head(self, key) -> Head | None:
        path = self.path(key)
        return Head(size=path.stat().st_size) if path.is_file() else None

    async def sha256(self, key) -> bytes:
        def digest() -> bytes:
            h = hashlib.sha256()
            with open(self.path(key), "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            return h.digest()

        return await asyncio.to_thread(digest)

    async def presign_get(self, key, *, filename, content_type, expires_s, origin) -> str:
        return self._url(origin, "GET", key, expires_s,
                         {"ct": content_type, "cd": content_disposition(filename, content_type)})

    async def delete(self, keys) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    async def delete_prefix(self, prefix) -> int:
        folder = self.path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file() and ".uploads" not in p.parts[-3:-1]
                    and not p.parent.name.endswith(".uploads"))
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return count

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


def add_routes(app: web.Application, store: FileStore) -> None:
    """The URLs :class:`FileStore` signs. They answer S3-style: 200 with an ETag on PUT, the bytes
    (with Range support, for video seeking) on GET, 403 for a bad or expired signature."""

    async def put(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        extra = store.verify("PUT", key, request.query)
        if "uploadId" in extra:
            target = store._parts_dir(key, extra["uploadId"]) / extra["partNumber"]
        else:
            if request.headers.get("Content-Type", "") != extra.get("ct"):
                raise ApiError(403, "signature_mismatch", f"Content-Type must be {extra.get('ct')!r}, as signed")
            target = store.path(key)
        limit = store.settings.max_bytes
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{secrets.token_hex(4)}")
        size, digest = 0, hashlib.md5(usedforsecurity=False)
        try:
            with open(tmp, "wb") as out:
                async for chunk in request.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, "payload_too_large", f"objects are limited to {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return web.Response(status=200, headers={"ETag": f'"{digest.hexdigest()}"'})

    async def get(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        extra = store.verify("GET", key, request.query)
        path = store.path(key)
        if not path.is_file():
            raise ApiError(404, "not_found", "no such object")
        headers = {"Content-Type": extra.get("ct", "application/octet-stream"),
                   "Content-Disposition": extra.get("cd", "attachment"), "X-Content-Type-Options": "nosniff"}
        return web.FileResponse(path, headers=headers)

    app.router.add_put("/v1/storage/{key:.+}", put)
    app.router.add_get("/v1/storage/{key:.+}", get)
