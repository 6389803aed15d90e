"""``atas serve ingest`` as a process: a harness streams a run, ``atas import junit`` uploads a
report, events reach Kafka, SIGTERM drains and exits cleanly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from atas.client import Client
from atas.common.bus import KafkaBus
from atas.common.events import decode_event
from tests.conftest import make_settings, settings_env
from tests.helpers import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.pg, pytest.mark.kafka]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "junit"


def _atas(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atas.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


async def test_serve_ingest_then_import_junit_from_the_cli(pg, kafka_settings, token, tmp_path):
    settings = make_settings(db_dsn=pg, kafka=kafka_settings)
    server = ServiceProcess(["serve", "ingest"], settings_env(settings), tmp_path, "ingest")
    try:
        await asyncio.to_thread(server.wait_healthy, 30, "/readyz")
        write = token(scopes=["ingest:write"], projects=["web"])

        def harness():
            with Client(server.url, write, batch_size=50) as atas:
                run = atas.start_execution("web", "e2e run", branch="main")
                atas.add_results(run.id, [{"test_id": f"t{i}", "name": f"t{i}", "status": "passed"}
                                          for i in range(120)])
                return atas.finish_execution(run.id)

        finished = await asyncio.to_thread(harness)
        assert finished.status == "passed" and finished.counts.total == 120

        env = {k: v for k, v in os.environ.items() if k not in ("ATAS_URL", "ATAS_TOKEN")}
        env.update(ATAS_URL=server.url, ATAS_TOKEN=write)
        report = str(FIXTURES / "surefire.xml")
        first = await asyncio.to_thread(_atas, "import", "junit", report, "--project", "web", "--branch", "main",
                                        env=env)
        assert first.returncode == 0, first.stderr
        assert "imported as execution" in first.stdout
        assert "8 tests: 5 passed (1 flaky), 1 failed, 1 error, 1 skipped; 13 attempts" in first.stdout
        assert "status failed" in first.stdout
        again = await asyncio.to_thread(_atas, "import", "junit", report, "--project", "web", "--branch", "main",
                                        env=env)
        assert again.returncode == 0 and "already imported" in again.stdout
        refused = await asyncio.to_thread(_atas, "import", "junit", str(FIXTURES / "xxe.xml"), "--project", "web",
                                          env=env)
        assert refused.returncode == 1 and "forbidden_xml" in refused.stderr
        missing = await asyncio.to_thread(_atas, "import", "junit", report, "--project", "web",
                                          env={k: v for k, v in env.items() if k != "ATAS_TOKEN"})
        assert missing.returncode == 2 and "ATAS_TOKEN" in missing.stderr

        # every event of both executions reached Kafka: started, 3 batches, finished; and the import's 3
        sub = KafkaBus(kafka_settings).subscription(f"e2e-{uuid.uuid4().hex[:6]}", from_beginning=True)
        await sub.start()
        seen: set[str] = set()
        try:
            async with asyncio.timeout(60):
                while len(seen) < 8:
                    seen.update(decode_event(m.value).id for m in await sub.poll(0.5))
        finally:
            await sub.stop()
        assert len(seen) == 8
    finally:
        server.terminate()
        code = await asyncio.to_thread(server.wait, 30)
    assert code == 0
    assert "outbox relay stopped" in server.log_path.read_text()
