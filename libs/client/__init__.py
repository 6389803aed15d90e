"""ATAS harness client: report executions and results to the ingest API.

Async (aiohttp) with a blocking wrapper for harnesses that are not async::

    from atas.client import Client

    with Client("https://atas.example", token) as atas:
        run = atas.start_execution("web", "nightly e2e", branch="main", commit=sha)
        atas.add_results(run.id, [{"test_id": "login::ok", "name": "login ok", "status": "passed"}])
        atas.finish_execution(run.id)          # status derived from the results

    async with AsyncClient(url, token) as atas:   # the same API, awaitable
        ...

Every call is safe to retry, and the client retries by itself: on 502/503/504/429 (honouring
``Retry-After``) and on connection errors or timeouts, with capped exponential back-off. Executions
get a client-side UUID when you don't pass one, so a retried start finds the first; a retried batch
is recognised by the server (``(test_id, attempt)`` or the result ``id``), so nothing is stored
twice — such results come back counted as ``duplicates``. Any other error raises
:class:`AtasError` with the server's status, code, message and field path.
"""

from __future__ import annotations

from atas.common.schemas import (
    Attachment, BatchAccepted, Counts, Execution, ExecutionCreate, ExecutionFinish, JunitImported, ResultIn,
    Tests,
)

from .client import AsyncClient, AtasError, Client

__all__ = [
    "AsyncClient", "AtasError", "Attachment", "BatchAccepted", "Client", "Counts", "Execution", "ExecutionCreate",
    "ExecutionFinish", "JunitImported", "ResultIn", "Tests",
]
