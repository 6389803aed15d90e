"""atas.client against the real ingest app (real PostgreSQL), and its retry behaviour."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from atas.client import AsyncClient, AtasError, Client, ResultIn

from .conftest import results


@pytest.mark.pg
async def test_a_harness_reports_a_run_through_the_client(ingest, token):
    app_client = await ingest()
    url = str(app_client.make_url("/")).rstrip("/")
    async with AsyncClient(url, token(scopes=["ingest:write"]), batch_size=7) as atas:
        run_id = uuid.uuid4()
        run = await atas.start_execution("demo", "nightly", id=run_id, branch="main", attributes={"ci": "x"})
        again = await atas.start_execution("demo", "nightly", id=run_id, branch="main", attributes={"ci": "x"})
        assert run.id == again.id == run_id and run.status == "running"
        batch = results(20, status_of=lambda i: "failed" if i == 3 else "passed")
        batch[0] = ResultIn(test_id="typed", name="typed", status="skipped")  # structs and dicts mix
        sent = await atas.add_results(run.id, batch)
        assert (sent.accepted, sent.duplicates, sent.counts.total) == (20, 0, 20)
        resent = await atas.add_results(run.id, batch)  # a harness replaying its results
        assert (resent.accepted, resent.duplicates) == (0, 20)
        done = await atas.finish_execution(run.id)
        assert done.status == "failed" and done.counts.failed == 1 and done.counts.skipped == 1
        with pytest.raises(AtasError) as info:
            await atas.add_results(run.id, [{"test_id": "x", "name": "x", "status": "bogus"}])
        assert info.value.status == 422 and info.value.field == "results[0].status"
        with pytest.raises(AtasError) as info:
            await atas.start_execution("elsewhere", "n")
        assert info.value.status == 403


async def test_the_client_retries_503_honouring_retry_after():
    calls = []

    async def flaky(request: web.Request) -> web.Response:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            return web.json_response({"error": {"status": 503, "code": "unavailable", "message": "db down"}},
                                     status=503, headers={"Retry-After": "0.2"})
        return web.json_response({"id": str(uuid.uuid4()), "project": "demo", "name": "n", "status": "running",
                                  "started_at": "2026-01-01T00:00:00Z"}, status=201)

    app = web.Application()
    app.router.add_post("/v1/executions", flaky)
    server = TestServer(app)
    await server.start_server()
    try:
        async with AsyncClient(str(server.make_url("")), "t", backoff_s=0.01) as atas:
            run = await atas.start_execution("demo", "n")
        assert run.status == "running" and len(calls) == 3
        assert calls[1] - calls[0] >= 0.19 and calls[2] - calls[1] >= 0.19  # waited as told
        calls.clear()
        async with AsyncClient(str(server.make_url("")), "t", retries=1) as atas:
            with pytest.raises(AtasError) as info:
                await atas.start_execution("demo", "n")
        assert info.value.status == 503 and len(calls) == 2
    finally:
        await server.close()


async def test_the_client_gives_up_on_an_unreachable_server_after_its_retries():
    from tests.helpers import free_port

    async with AsyncClient(f"http://127.0.0.1:{free_port()}", "t", retries=2, backoff_s=0.01) as atas:
        with pytest.raises(AtasError) as info:
            await atas.finish_execution(uuid.uuid4())
    assert info.value.status == 0 and "3 attempts" in info.value.message


def test_the_blocking_client_runs_without_an_event_loop():
    from tests.helpers import free_port

    with Client(f"http://127.0.0.1:{free_port()}", "t", retries=0) as atas:
        with pytest.raises(AtasError):
            atas.start_execution("demo", "n")


@pytest.mark.pg
async def test_a_report_over_the_body_limit_is_a_413_not_a_connection_error(ingest, token):
    import msgspec

    from .conftest import FAST

    app_client = await ingest(config=msgspec.structs.replace(FAST, max_body_bytes=1024 * 1024))
    url = str(app_client.make_url("/")).rstrip("/")
    async with AsyncClient(url, token(scopes=["ingest:write"]), retries=1, backoff_s=0.01) as atas:
        with pytest.raises(AtasError) as info:
            await atas.import_junit("demo", b"<testsuites>" + b" " * (20 * 1024 * 1024) + b"</testsuites>")
    assert info.value.status == 413 and info.value.details == {"max_bytes": 1024 * 1024}
