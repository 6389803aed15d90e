"""S3 and S3-compatible stores through aiobotocore (botocore signs every URL and request).

Why not ``obstore`` (tried first, 0.12.1): its ``sign(store, method, paths, expires_in)`` signs a
method and a path only, with no query parameters and no headers. A presigned multipart part upload
must sign ``partNumber`` and ``uploadId``, a download must sign ``response-content-disposition``
(so HTML/SVG download instead of rendering) and an upload must sign ``content-type``; none can be
expressed. Its ``head`` returns path, size, etag and version only. aiobotocore presigns any
operation with any parameter, speaks to S3Proxy, MinIO and GCS's XML API alike, and takes
credentials from botocore's chain (IRSA web identity, instance profile, environment).
"""

from __future__ import annotations

import asyncio
import hashlib

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .storage import Head, IncompleteUpload, StorageSettings, StorageUnavailable, Upload, content_disposition

_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store:
    """One botocore client for the process; presigning is local CPU work, other calls go out."""

    def __init__(self, settings: StorageSettings):
        self.settings = settings
        self._client = None
        self._ctx = None
        self._lock = asyncio.Lock()
        self._bulk_delete = True

    def key(self, *parts: str) -> str:
        return self.settings.prefix + "/".join(parts)

    async def _c(self):
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    s = self.settings
                    config = Config(
                        signature_version="s3v4", connect_timeout=2, read_timeout=30,
                        # botocore's default of 10 would queue completions (HEAD, list/complete
                        # parts) behind each other when many harness workers finish at once.
                        max_pool_connections=64,
                        retries={"mode": "standard", "max_attempts": 2},
                        # Checksum headers only where S3 requires them: S3-compatible servers refuse
                        # the optional ones with NotImplemented.
                        request_checksum_calculation="when_required", response_checksum_validation="when_required",
                        # A custom endpoint (S3Proxy, MinIO) rarely has wildcard DNS for bucket hosts.
                        s3={"addressing_style": "path" if s.endpoint_url else "auto"},
                    )
                    kwargs = {}
                    if s.access_key_id:
                        kwargs = {"aws_access_key_id": s.access_key_id, "aws_secret_access_key": s.secret_access_key}
                    self._ctx = get_session().create_client(
                        "s3", region_name=s.region or "us-east-1", endpoint_url=s.endpoint_url, config=config,
                        **kwargs)
                    self._client = await self._ctx.__aenter__()
        return self._client

    async def _call(self, op: str, **params):
        client = await self._c()
        try:
            return await getattr(client, op)(Bucket=self.settings.bucket, **params)
        except ClientError as exc:
            if _code(exc) in _MISSING or _code(exc) == "NotImplemented":
                raise
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 or _code(exc) in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageUnavailable(f"{op}: {exc}") from exc
            raise
        except (BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise StorageUnavailable(f"{op}: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        await self._call("head_bucket")

    async def _presign(self, op: str, params: dict, expires_s: int) -> str:
        client = await self._c()
        return await client.generate_presigned_url(op, Params={"Bucket": self.settings.bucket, **params},
                                                   ExpiresIn=expires_s)

    async def presign_put(self, key: str, content_type: str, size: int, expires_s: int, origin: str) -> Upload:
        url = await self._presign("put_object", {"Key": key, "ContentType": content_type}, expires_s)
        return Upload(method="PUT", url=url, headers={"Content-Type": content_type})

    async def create_multipart(self, key: str, content_type: str) -> str:
        out = await self._call("create_multipart_upload", Key=key, ContentType=content_type)
        return out["UploadId"]

    async def presign_part(self, key: str, upload_id: str, number: int, expires_s: int, origin: str) -> Upload:
        url = await self._presign("upload_part", {"Key": key, "UploadId": upload_id, "PartNumber": number},
                                  expires_s)
        return Upload(method="PUT", url=url)

    async def complete_multipart(self, key: str, upload_id: str, parts: int) -> None:
        """Complete from the store's own list of parts, so a harness never has to read ETags
        (browsers cannot, without an ExposeHeaders CORS rule)."""
        found: dict[int, str] = {}
        marker = 0
        while True:
            try:
                page = await self._call("list_parts", Key=key, UploadId=upload_id, PartNumberMarker=marker)
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    raise IncompleteUpload("the multipart upload does not exist (completed or aborted)") from None
                raise
            for p in page.get("Parts", []):
                found[p["PartNumber"]] = p["ETag"]
            if not page.get("IsTruncated"):
                break
            marker = page["NextPartNumberMarker"]
        missing = [n for n in range(1, parts + 1) if n not in found]
        if missing:
            raise IncompleteUpload(f"{len(missing)} of {parts} parts are missing (first: part {missing[0]})")
        await self._call("complete_multipart_upload", Key=key, UploadId=upload_id,
                         MultipartUpload={"Parts": [{"PartNumber": n, "ETag": found[n]} for n in range(1, parts + 1)]})

    async def head(self, key: str) -> Head | None:
        try:
            out = await self._call("head_object", Key=key)
        except ClientError:
            return None
        return Head(size=int(out["ContentLength"]), content_type=out.get("ContentType"))

    async def sha256(self, key: str) -> bytes:
        out = await self._call("get_object", Key=key)
        digest = hashlib.sha256()
        async with out["Body"] as body:
            while chunk := await body.read(1024 * 1024):
                digest.update(chunk)
        return digest.digest()

    async def presign_get(self, key: str, *, filename: str, content_type: str, expires_s: int, origin: str) -> str:
        return await self._presign("get_object", {
            "Key": key, "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition(filename, content_type),
        }, expires_s)

    async def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            if self._bulk_delete:
                try:
                    await self._call("delete_objects", Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
                    continue
                except ClientError as exc:
                    # DeleteObjects must carry a checksum header that some S3-compatible servers
                    # (S3Proxy 3.0) answer NotImplemented; one DELETE per key works everywhere.
                    if _code(exc) != "NotImplemented":
                        raise
                    self._bulk_delete = False
            for start in range(0, len(batch), 32):
                await asyncio.gather(*(self._call("delete_object", Key=k) for k in batch[start:start + 32]))

    async def delete_prefix(self, prefix: str) -> int:
        keys: list[str] = []
        token = None
        while True:
            params = {"Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = await self._call("list_objects_v2", **params)
            keys.extend(o["Key"] for o in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        await self.delete(keys)
        # Unfinished multipart uploads hold stored parts too (and are billed): abort them.
        try:
            uploads = await self._call("list_multipart_uploads", Prefix=prefix)
        except ClientError:
            uploads = {}
        for u in uploads.get("Uploads", []):
            try:
                await self._call("abort_multipart_upload", Key=u["Key"], UploadId=u["UploadId"])
            except ClientError:
                pass
        return len(keys)

    async def open(self) -> None:
        await self._c()

    async def close(self) -> None:
        if self._ctx is not None:
            await self._ctx.__aexit__(None, None, None)
            self._ctx = self._client = None
