"""`atas dev` end to end, over both engines: embedded (nothing configured) and real Redis + Kafka.

A new user's path: start `atas dev` on a fresh data folder, import a JUnit report with
`atas import junit`, read it back in the dashboard overview, and watch its events arrive live.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import aiohttp
import pytest

from atas.common.db import create_database, drop_database

from tests.helpers import ServiceProcess

pytestmark = pytest.mark.e2e

SUITE = textwrap.dedent("""
    import pytest

    @pytest.mark.parametrize("n", range(5))
    def test_passes(n):
        assert n >= 0

    def test_fails():
        assert 1 + 1 == 3, "arithmetic is broken"

    @pytest.mark.skip(reason="not today")
    def test_skipped():
        pass
""")


@pytest.fixture(scope="module")
def junit_report(tmp_path_factory) -> Path:
    """A report written by the real pytest --junitxml: 5 passed, 1 failed, 1 skipped."""
    folder = tmp_path_factory.mktemp("junit")
    (folder / "test_sample.py").write_text(SUITE)
    report = folder / "report.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           f"--junitxml={report}", str(folder / "test_sample.py")],
                          cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout  # one test fails on purpose
    return report


async def _fresh_database(server_url: str) -> str:
    return await create_database(server_url, f"atas_dev_{secrets.token_hex(4)}")


def _base_env() -> dict[str, str]:
    drop = ("DB_URL", "DB_USER", "DB_PASSWORD", "REDIS_HOST", "REDIS_PORT", "KAFKA_BOOTSTRAP_SERVERS",
            "KAFKA_TOPIC", "JWT_SECRET", "ATAS_URL", "ATAS_TOKEN")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.mark.parametrize("engines", [
    "embedded",
    pytest.param("redis+kafka", marks=[pytest.mark.pg, pytest.mark.redis, pytest.mark.kafka]),
])
async def test_import_junit_then_read_overview_and_stream(engines, request, tmp_path, junit_report):
    env = _base_env()
    if engines == "redis+kafka":
        env["DB_URL"] = await _fresh_database(request.getfixturevalue("pg_server_url"))
        host, port = request.getfixturevalue("redis_server")
        env["REDIS_HOST"], env["REDIS_PORT"] = host, str(port)
        env["KAFKA_BOOTSTRAP_SERVERS"] = request.getfixturevalue("kafka_server")
        env["KAFKA_TOPIC"] = f"atas.events.dev-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    dev = ServiceProcess(["dev", "--data-dir", str(data_dir)], env, tmp_path, "atas-dev")
    try:
        dev.wait_healthy(timeout=90, path="/readyz")
        log = dev.logs()
        assert "ATAS is running" in log and "Development token" in log
        if engines == "embedded":
            assert "PostgreSQL embedded; events in-process; cache and fan-out in-process" in log
        else:
            assert f"Kafka {env['KAFKA_BOOTSTRAP_SERVERS']}" in log and f"Redis {env['REDIS_HOST']}" in log
        token = (data_dir / "dev_token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        # The dashboard link signs a browser in once (tests/e2e/dashboard drives a real browser).
        link = re.search(r"Dashboard +(http://\S+/signin/link/\S+)", log).group(1)
        async with aiohttp.ClientSession() as browser:
            async with browser.get(link, allow_redirects=False) as first:
                assert first.status == 303 and "HttpOnly" in first.headers["Set-Cookie"]
            async with browser.get(link, allow_redirects=False) as again:
                assert again.status == 410
        project = f"e2e-{engines.replace('+', '-')}"

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            if engines == "redis+kafka":
                # A brand-new consumer group starts at the end of the topic once Kafka assigned it
                # partitions; events published before that are not bridged. Wait for the assignment,
                # as an operator would wait for a fresh deployment to settle.
                async with asyncio.timeout(45):
                    while True:
                        async with session.get(f"{dev.url}/metrics") as r:
                            if "atas_stream_bridge_assigned 1.0" in await r.text():
                                break
                        await asyncio.sleep(0.2)
            stream = await session.get(f"{dev.url}/v1/stream", params={"project": project}, headers=auth)
            assert stream.status == 200
            events: list[dict] = []

            async def read_events() -> None:
                data = None
                async for raw in stream.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("data:"):
                        data = json.loads(line[5:])
                    elif line == "" and data is not None:
                        events.append(data)
                        if data.get("type") == "execution.finished":
                            return
                        data = None

            reader = asyncio.create_task(read_events())
            await asyncio.sleep(0.5)  # the stream is subscribed before anything is imported

            imported = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "atas.cli.main", "import", "junit", str(junit_report), "--project", project,
                 "--url", dev.url, "--token", token],
                capture_output=True, text=True, timeout=60,
            )
            assert imported.returncode == 0, imported.stdout + imported.stderr

            async with asyncio.timeout(45):
                await reader
            stream.close()
            types = [e["type"] for e in events]
            assert types[0] == "execution.started" and types[-1] == "execution.finished"
            recorded = [e for e in events if e["type"] == "results.recorded"]
            assert sum(e["data"]["accepted"] for e in recorded) == 7
            assert {e["execution_id"] for e in events} == {events[0]["execution_id"]}

            # Per-test rollups (top failing tests) follow ingest by one rollup worker round (~0.5 s),
            # the counts do not: a read right after the import may be partial. Like a user
            # refreshing, read again; the partial answer must not stay cached (60 s TTL) meanwhile.
            async with asyncio.timeout(10):
                while True:
                    async with session.get(f"{dev.url}/v1/dashboard/overview", params={"project": project},
                                           headers=auth) as r:
                        assert r.status == 200, await r.text()
                        overview = await r.json()
                    if overview["top_failing_tests"]:
                        break
                    await asyncio.sleep(0.2)
        assert overview["executions"] == 1
        assert overview["results"] == 7
        assert overview["results_by_status"] == {"passed": 5, "failed": 1, "skipped": 1, "error": 0}
        assert overview["tests"] == {"total": 7, "passed": 5, "failed": 1, "error": 0, "skipped": 1, "flaky": 0}
        assert overview["pass_rate"] == overview["attempt_pass_rate"] == round(5 / 6, 6)  # no reruns
        assert [t["name"] for t in overview["top_failing_tests"]] == ["test_fails"]
    finally:
        code = dev.stop(timeout=30)
        if engines == "redis+kafka":
            await drop_database(env["DB_URL"])
        else:
            from atas.common.stack import Stack

            # atas dev keeps its database between runs; as root that is under /var/lib/atas, which
            # pytest's tmp_path clean-up does not reach.
            Stack(data_dir / "stack").down(purge=True)
    assert code == 0, dev.log_path.read_text()[-3000:]
    assert "stopping the embedded PostgreSQL" in dev.log_path.read_text() or engines != "embedded"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atas.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


async def test_demo_data_tells_a_realistic_story_once_and_tokens_come_from_the_dev_secret(tmp_path):
    """The first ten minutes (issue #21): `--demo` data where most runs pass and flaky tests show,
    not added twice; `atas token` and `atas stack env` agree with the secret the server verifies."""
    env = _base_env()
    env.pop("ATAS_DATA_DIR", None)
    data_dir = tmp_path / "data"
    dev = ServiceProcess(["dev", "--data-dir", str(data_dir), "--demo"], env, tmp_path, "atas-dev-demo")
    try:
        dev.wait_healthy(timeout=90, path="/readyz")
        async with asyncio.timeout(120):
            while "demo data ready" not in dev.logs():
                await asyncio.sleep(0.5)
        log = dev.logs()
        # the banner comes again after the demo's request logs
        assert log.rfind("ATAS is running") > log.find("filling project")
        minted = _cli("token", "-p", "demo", "-s", "query:read", "--data-dir", str(data_dir), env=env)
        assert minted.returncode == 0, minted.stderr
        auth = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        stack_env = _cli("stack", "env", "--dir", str(data_dir / "stack"), env=env).stdout
        assert f"JWT_SECRET={(data_dir / 'jwt_secret').read_text().strip()}" in stack_env.replace("'", "")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async def get(path: str, **params) -> dict:
                async with session.get(f"{dev.url}{path}", params={"project": "demo", **params},
                                       headers=auth) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            page = await get("/v1/executions", limit="200")
            statuses = [e["status"] for e in page["items"]]
            assert len(statuses) == 30
            assert statuses.count("passed") >= 18 and statuses.count("failed") >= 1, statuses
            failing = await get("/v1/tests/failing")
            assert 1 <= len(failing["items"]) <= 12
            async with asyncio.timeout(20):  # per-test rollups follow ingest by a worker round
                while not (flaky := (await get("/v1/tests/flaky"))["items"]):
                    await asyncio.sleep(0.3)
            assert any(t["flaky_commits"] > 0 for t in flaky), flaky
            assert len(flaky) <= 8
    finally:
        assert dev.stop(timeout=30) == 0, dev.logs()
    again = ServiceProcess(["dev", "--data-dir", str(data_dir), "--demo"], env, tmp_path, "atas-dev-demo-2")
    try:
        again.wait_healthy(timeout=90, path="/readyz")
        async with asyncio.timeout(30):
            while "already holds executions" not in again.logs():
                await asyncio.sleep(0.3)
        token = (data_dir / "dev_token").read_text().strip()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{again.url}/v1/executions", params={"project": "demo", "limit": "200"},
                                   headers={"Authorization": f"Bearer {token}"}) as r:
                assert len((await r.json())["items"]) == 30
    finally:
        assert again.stop(timeout=30) == 0, again.logs()
