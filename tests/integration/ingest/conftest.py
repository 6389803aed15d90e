"""An in-process ingest app on a real PostgreSQL (and, when given, a real Kafka)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.bus import EventBus
from atas.common.engines import install_engines
from atas.ingest.app import INGEST_STATE, setup
from atas.ingest.config import IngestConfig
from tests.conftest import make_settings

FAST = IngestConfig(relay_poll_s=0.2, relay_backoff_max_s=1.0)


@pytest.fixture
async def ingest(pg):
    """``await ingest(kafka=..., config=..., bus=...)`` → a started aiohttp TestClient."""
    clients: list[TestClient] = []

    async def _make(*, kafka=None, config: IngestConfig = FAST, bus: EventBus | None = None) -> TestClient:
        settings = make_settings(db_dsn=pg, kafka=kafka)
        app = create_app(settings, "ingest", client_max_size=config.max_body_bytes)
        install_engines(app, application_name="atas-ingest-test", bus=bus)
        setup(app, config)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield _make
    for client in reversed(clients):
        await client.close()


@pytest.fixture
def auth(token):
    def _auth(projects=("demo",), scopes=("ingest:write",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(scopes=scopes, projects=projects)}"}

    return _auth


def relay_of(client: TestClient):
    return client.app[INGEST_STATE].relay


async def start(client: TestClient, headers: dict, **body) -> dict:
    body.setdefault("project", "demo")
    body.setdefault("name", "nightly")
    body.setdefault("id", str(uuid.uuid4()))
    resp = await client.post("/v1/executions", json=body, headers=headers)
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


def results(n: int, *, prefix: str = "t", status_of=lambda i: "passed", attempt: int = 1) -> list[dict]:
    return [{"test_id": f"{prefix}{i}", "name": f"test {i}", "status": status_of(i), "attempt": attempt,
             "duration_ms": 10, "suite": "suite", **({"error_type": "AssertionError", "error_message": f"boom {i}"}
                                                   if status_of(i) in ("failed", "error") else {})}
            for i in range(n)]


async def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Await an async predicate until it is truthy (returns its value) or fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(interval)
