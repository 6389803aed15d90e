"""The client implementation; import it from :mod:`atas.client`."""

from __future__ import annotations

import asyncio
import io
import random
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec

from atas.common.attachments import AttachmentView
from atas.common.schemas import (
    BatchAccepted, Counts, Execution, ExecutionCreate, ExecutionFinish, JunitImported, ResultIn, Tests,
)

T = TypeVar("T")

# Statuses worth retrying: the server (or a proxy in front of it) is briefly unable to answer.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_encoder = msgspec.json.Encoder()
_STREAM_BYTES = 256 * 1024


class AtasError(Exception):
    """The server refused a request (or retries ran out). ``status`` is 0 for a connection failure."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None, details: Any = None):
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details


def _error_from(status: int, body: bytes) -> AtasError:
    try:
        err = msgspec.json.decode(body).get("error", {})
        return AtasError(status, err.get("code", "error"), err.get("message", ""), field=err.get("field"),
                         details=err.get("details"))
    except (msgspec.DecodeError, AttributeError):
        return AtasError(status, "error", body[:500].decode(errors="replace"))


class AsyncClient:
    """An ingest API client. One instance per harness process; close it (or use ``async with``).

    ``retries`` is how many times one request is retried after a retryable failure; back-off grows
    from ``backoff_s`` to ``backoff_max_s`` (with jitter), or follows the server's ``Retry-After``.
    ``batch_size`` splits :meth:`add_results` into requests (the server's limit is INGEST_MAX_BATCH,
    1000 by default).
    """

    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0, retries: int = 5,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0, batch_size: int = 500,
                 session: aiohttp.ClientSession | None = None):
        if not url:
            raise ValueError("url is required, e.g. https://atas.example")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.batch_size = batch_size
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    # ------------------------------------------------------------------ API
    async def start_execution(self, project: str, name: str, *, id: uuid.UUID | str | None = None,
                              environment: str | None = None, branch: str | None = None,
                              commit: str | None = None, build_url: str | None = None,
                              started_at: datetime | None = None,
                              attributes: Mapping[str, Any] | None = None) -> Execution:
        """Start (or, with the same ``id`` and fields, find again) an execution."""
        body = ExecutionCreate(project=project, name=name, id=uuid.UUID(str(id)) if id else uuid.uuid4(),
                               environment=environment, branch=branch, commit=commit, build_url=build_url,
                               started_at=started_at, attributes=dict(attributes or {}))
        return await self._call("POST", "/v1/executions", Execution, json=body)

    async def add_results(self, execution_id: uuid.UUID | str,
                          results: Iterable[ResultIn | Mapping[str, Any]], *,
                          batch_size: int | None = None) -> BatchAccepted:
        """Send results in batches of ``batch_size``; returns the sums over all batches (``counts``
        and ``tests`` are the execution's summaries after the last one). Results may be :class:`ResultIn` or dicts
        with the same fields."""
        size = batch_size or self.batch_size
        path = f"/v1/executions/{execution_id}/results"
        accepted = duplicates = 0
        counts, tests = Counts(), Tests()
        batch: list = []

        async def flush() -> None:
            nonlocal accepted, duplicates, counts, tests
            answer = await self._call("POST", path, BatchAccepted, json={"results": batch})
            accepted += answer.accepted
            duplicates += answer.duplicates
            counts, tests = answer.counts, answer.tests
            batch.clear()

        for result in results:
            batch.append(result)
            if len(batch) >= size:
                await flush()
        if batch:
            await flush()
        return BatchAccepted(execution_id=uuid.UUID(str(execution_id)), accepted=accepted, duplicates=duplicates,
                             counts=counts, tests=tests)

    async def finish_execution(self, execution_id: uuid.UUID | str, status: str | None = None,
                               finished_at: datetime | None = None) -> Execution:
        """Finish the execution; without ``status`` the server derives it from the results."""
        return await self._call("POST", f"/v1/executions/{execution_id}/finish", Execution,
                                json=ExecutionFinish(status=status, finished_at=finished_at))

    async def import_junit(self, project: str, report: bytes | str | Path, *, name: str | None = None,
                           environment: str | None = None, branch: str | None = None,
                           commit: str | None = None, build_url: str | None = None,
                           execution_id: uuid.UUID | str | None = None) -> JunitImported:
        """Upload a JUnit XML report (bytes, or a path to the file) as one finished execution.
        Uploading the same report with the same parameters again returns the first import."""
        data = report if isinstance(report, bytes) else Path(report).read_bytes()
        params = {k: str(v) for k, v in (("project", project), ("name", name), ("environment", environment),
                                          ("branch", branch), ("commit", commit), ("build_url", build_url),
                                          ("execution_id", execution_id)) if v is not None}
        return await self._call("POST", "/v1/junit", JunitImported, data=data, params=params,
                                content_type="application/xml")

    async def attach(self, execution_id: uuid.UUID | str, path: str | Path, *, test_id: str | None = None,
                     attempt: int | None = None, kind: str | None = None, name: str | None = None,
                     content_type: str | None = None, progress=None) -> AttachmentView:
        """Upload a file (screenshot, video, trace, log) straight to object storage and link it to
        the execution, or to ``test_id``'s ``attempt``; returns the stored attachment (with its
        download path). Multipart for large files; ``progress(sent, total)`` after each part."""
        from .attach import attach

        return await attach(self, execution_id, path, test_id=test_id, attempt=attempt, kind=kind, name=name,
                            content_type=content_type, progress=progress)

    # ------------------------------------------------------------------ transport
    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.backoff_max_s, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own back-off
        ceiling = min(self.backoff_max_s, self.backoff_s * (2 ** attempt))
        return ceiling * (0.5 + random.random() / 2)

    async def _call(self, method: str, path: str, type_: type[T], *, json: Any = None, data: bytes | None = None,
                    params: dict[str, str] | None = None, content_type: str = "application/json") -> T:
        body = _encoder.encode(json) if json is not None else data
        headers = {**self._headers, "Content-Type": content_type}
        session = await self._http()
        attempt = 0
        while True:
            try:
                # Large bodies go as a stream (aiohttp warns that raw bytes block the loop); a new
                # one per attempt, since a retry sends it again from the start.
                data_ = io.BytesIO(body) if body is not None and len(body) > _STREAM_BYTES else body
                async with session.request(method, self.url + path, data=data_, params=params,
                                           headers=headers) as resp:
                    payload = await resp.read()
                    if resp.status < 400:
                        return msgspec.json.decode(payload, type=type_)
                    error = _error_from(resp.status, payload)
                    if resp.status not in RETRY_STATUSES or attempt >= self.retries:
                        raise error
                    delay = self._delay(attempt, resp.headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                if attempt >= self.retries:
                    raise AtasError(0, "unreachable", f"{method} {self.url}{path} failed after "
                                                      f"{attempt + 1} attempts: {type(exc).__name__}: {exc}") from exc
                delay = self._delay(attempt, None)
            attempt += 1
            await asyncio.sleep(delay)


class Client:
    """The blocking twin of :class:`AsyncClient` (same methods, same arguments). It runs its own
    event loop, so call it from plain threads, not from inside a running event loop."""

    def __init__(self, url: str, token: str, **options: Any):
        self._loop = asyncio.new_event_loop()
        self._client = AsyncClient(url, token, **options)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.close())
            self._loop.close()

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def start_execution(self, project: str, name: str, **fields: Any) -> Execution:
        return self._run(self._client.start_execution(project, name, **fields))

    def add_results(self, execution_id: uuid.UUID | str, results: Iterable[ResultIn | Mapping[str, Any]],
                    **options: Any) -> BatchAccepted:
        return self._run(self._client.add_results(execution_id, results, **options))

    def finish_execution(self, execution_id: uuid.UUID | str, status: str | None = None,
                         finished_at: datetime | None = None) -> Execution:
        return self._run(self._client.finish_execution(execution_id, status, finished_at))

    def import_junit(self, project: str, report: bytes | str | Path, **fields: Any) -> JunitImported:
        return self._run(self._client.import_junit(project, report, **fields))

    def attach(self, execution_id: uuid.UUID | str, path: str | Path, **options: Any) -> AttachmentView:
        return self._run(self._client.attach(execution_id, path, **options))
