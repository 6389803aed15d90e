"""Ingest and query on one in-process app (as ``atas dev`` composes them), on a real PostgreSQL
and a real S3-compatible server (S3Proxy): uploads go through real SigV4 presigned URLs."""

from __future__ import annotations

import hashlib
import io
import uuid

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.engines import install_engines
from atas.common.storage import StorageSettings
from atas.ingest.app import setup as setup_ingest
from atas.ingest.config import IngestConfig
from atas.query.app import setup as setup_query
from atas.query.config import QueryConfig
from tests.conftest import make_settings

# The relay is off: a test reads the events its calls appended to the outbox.
CONFIG = IngestConfig(relay_enabled=False)


@pytest.fixture
async def app_with(pg):
    """``await app_with(storage)`` → a started TestClient serving ingest and query."""
    clients: list[TestClient] = []

    async def _make(storage: StorageSettings | None) -> TestClient:
        settings = make_settings(db_dsn=pg, storage=storage)
        app = create_app(settings, "dev", client_max_size=CONFIG.max_body_bytes)
        install_engines(app, application_name="atas-attach-test")
        setup_ingest(app, CONFIG)
        setup_query(app, QueryConfig(invalidation_enabled=False))
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield _make
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def http():
    """A plain HTTP client for the presigned URLs (no ATAS token: the URL is the credential)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def headers(token):
    def _h(projects=("demo",), scopes=("ingest:write", "query:read")) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(scopes=scopes, projects=projects)}"}

    return _h


async def new_execution(client: TestClient, headers: dict, project: str = "demo") -> str:
    resp = await client.post("/v1/executions", json={"project": project, "name": "e2e", "id": str(uuid.uuid4())},
                             headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def upload(http: aiohttp.ClientSession, created: dict, data: bytes) -> None:
    """Send ``data`` the way the create answer says: one PUT, or each part to its URL."""
    if created.get("upload"):
        up = created["upload"]
        async with http.request(up["method"], up["url"], data=io.BytesIO(data), headers=up["headers"]) as resp:
            assert resp.status == 200, await resp.text()
        return
    offset = 0
    for part in created["parts"]:
        chunk = data[offset:offset + part["size_bytes"]]
        offset += part["size_bytes"]
        async with http.request(part["method"], part["url"], data=io.BytesIO(chunk), headers=part["headers"]) as resp:
            assert resp.status == 200, await resp.text()
    assert offset == len(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode(raw: bytes):
    return msgspec.json.decode(raw)
