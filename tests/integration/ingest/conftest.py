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

FAST = IngestConfig(relay_poll_s=0.2, relay_backoff_max_s=1.0, relay_publish_timeout_s=3.0)


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


class PrivateKafka:
    """A broker of this test alone (never the shared one), which the test may stop and restart.

    A restart relaunches the exact command line of the running broker: same ports, same
    ``kafka.properties``, same data folder (``Stack.up`` would re-format storage on new ports)."""

    def __init__(self, directory):
        from atas.common.stack import Stack

        self.stack = Stack(directory)
        env = self.stack.up(["kafka"])
        self.bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
        info = self.stack.load_state()["kafka"]
        self.port = info["port"]
        self.pid = info["pid"]
        with open(f"/proc/{self.pid}/cmdline", "rb") as f:
            self.cmdline = [a.decode() for a in f.read().split(b"\0") if a]
        self.log = directory / "kafka-restarted.log"
        self.proc = None  # the relaunched broker, once restarted

    def stop(self) -> None:
        import os
        import signal
        import time

        from atas.common.stack import pid_alive, port_open

        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while (pid_alive(self.pid) or port_open(self.port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(self.pid), "Kafka did not stop"
        if self.proc is not None:
            self.proc.wait(5)

    def restart(self) -> None:
        import subprocess

        from atas.common.stack import port_open, wait_for

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmdline, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 90, "restarted Kafka", self.log)
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def close(self) -> None:
        from atas.common.stack import pid_alive

        if pid_alive(self.pid):
            self.stop()
        self.stack.down(purge=True)


@pytest.fixture
def private_kafka(request, tmp_path):
    if request.node.get_closest_marker("kafka") is None:
        pytest.fail("this test uses a real kafka server: mark it with @pytest.mark.kafka")
    broker = PrivateKafka(tmp_path / "kafka-stack")
    yield broker
    broker.close()
