"""PostgreSQL unavailable: ingest answers 503 with Retry-After (the harness client retries), and
readiness fails; nothing crashes."""

from __future__ import annotations

import uuid

from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.engines import install_engines
from atas.ingest.app import setup
from tests.conftest import make_settings
from tests.helpers import free_port

from .conftest import FAST, results


async def test_postgres_down_is_503_with_retry_after(auth):
    settings = make_settings(db_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    app = create_app(settings, "ingest")
    install_engines(app, application_name="atas-ingest-test")
    setup(app, FAST)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        h = auth()
        start = await client.post("/v1/executions", json={"project": "demo", "name": "n"}, headers=h)
        assert start.status == 503 and int(start.headers["Retry-After"]) > 0
        batch = await client.post(f"/v1/executions/{uuid.uuid4()}/results", json={"results": results(3)},
                                  headers=h)
        assert batch.status == 503 and (await batch.json())["error"]["code"] == "unavailable"
        # input errors are still reported as such: they are checked before the database is needed
        bad = await client.post("/v1/executions", json={"project": "demo"}, headers=h)
        assert bad.status == 422
        ready = await client.get("/readyz")
        assert ready.status == 503 and "postgres" in (await ready.json())["checks"]
    finally:
        await client.close()
