"""The pytest plugin against a real ``atas serve ingest``: a real pytest session in a subprocess
(plain, and with pytest-xdist ``-n 2``) is stored as pytest itself counted it — the same tests and
the same final outcome per test as its own --junitxml report and terminal summary. With ATAS down,
the results go to a spool file that ``atas upload-spool`` delivers, once however often it runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import make_settings, settings_env
from tests.helpers import ServiceProcess, free_port

from .sessions import FINAL_ATTEMPTS, clean_env, run_pytest, write_suite

pytestmark = [pytest.mark.e2e, pytest.mark.pg, pytest.mark.kafka]

# What the suite of sessions.py is, by pytest's own rules (asserted against pytest's output too).
EXPECTED = {
    "test_suite.py::test_pass": "passed",
    "test_suite.py::test_fail": "failed",
    "test_suite.py::test_setup_error": "error",
    "test_suite.py::test_skip": "skipped",
    "test_suite.py::test_xfail": "skipped",
    "test_suite.py::test_xpass": "passed",
    "test_suite.py::test_param[one]": "passed",
    "test_suite.py::test_param[two]": "passed",
    "test_suite.py::test_param[three]": "failed",
    "test_suite.py::test_rerun_then_pass": "passed",
    "test_suite.py::TestCart::test_total": "passed",
}
GITHUB = {"GITHUB_ACTIONS": "true", "GITHUB_REF_NAME": "main", "GITHUB_SHA": "0123abcd" * 5,
          "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "acme/shop", "GITHUB_RUN_ID": "42"}


@pytest.fixture
async def ingest(pg, kafka_settings, tmp_path):
    server = ServiceProcess(["serve", "ingest"], settings_env(make_settings(db_dsn=pg, kafka=kafka_settings)),
                            tmp_path, "ingest")
    try:
        await asyncio.to_thread(server.wait_healthy, 30, "/readyz")
        yield server
    finally:
        server.stop()


async def _stored(dsn: str, execution_id: str) -> tuple[asyncpg.Record, list[asyncpg.Record], int]:
    """The execution row, the final attempt of each of its tests, and how many attempts in all."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        execution = await conn.fetchrow("SELECT * FROM executions WHERE id = $1", uuid.UUID(execution_id))
        finals = await conn.fetch(FINAL_ATTEMPTS, uuid.UUID(execution_id))
        attempts = await conn.fetchval("SELECT count(*) FROM results WHERE execution_id = $1", uuid.UUID(execution_id))
    finally:
        await conn.close()
    return execution, finals, attempts


def _execution_id(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("atas: ") and "reported to execution" in line:
            return line.split("reported to execution ")[1].split()[0]
    raise AssertionError(f"no 'reported to execution' line in:\n{output}")


def _assert_stored_as_pytest_counted(session, finals, attempts) -> None:
    by_test = {r["test_id"]: r["status"] for r in finals}
    # pytest's own view first: the report and the summary line agree with EXPECTED...
    assert session.junit_outcomes() == EXPECTED
    assert session.junit_header() == {"tests": 11, "failures": 2, "errors": 1, "skipped": 2}
    summary = session.summary()
    assert summary == {"failed": 2, "passed": 5, "skipped": 1, "xfailed": 1, "xpassed": 1, "error": 1, "rerun": 1}
    # ...and ATAS stored exactly that: the same tests, the same final outcome of each.
    assert by_test == session.junit_outcomes()
    assert len(by_test) == session.junit_header()["tests"]
    for status, pytest_words in (("passed", ("passed", "xpassed")), ("failed", ("failed",)),
                                 ("error", ("error",)), ("skipped", ("skipped", "xfailed"))):
        assert sum(s == status for s in by_test.values()) == sum(summary.get(w, 0) for w in pytest_words), status
    assert attempts == len(by_test) + summary["rerun"]


def _assert_tests_summary(execution, session) -> None:
    """The execution's `tests` summary is the header of pytest's own report (xfail counts as
    skipped, xpass as passed, as junitxml does); the rerun-then-pass test is its one flaky test."""
    header = session.junit_header()
    assert (execution["tests_total"], execution["tests_failed"], execution["tests_errored"],
            execution["tests_skipped"]) == (header["tests"], header["failures"], header["errors"], header["skipped"])
    assert execution["tests_passed"] == header["tests"] - header["failures"] - header["errors"] - header["skipped"]
    assert execution["tests_flaky"] == session.summary()["rerun"] == 1


async def test_a_session_is_stored_as_pytest_counted_it(ingest, pg, token, tmp_path):
    suite = write_suite(tmp_path / "suite")
    env = clean_env(ATAS_URL=ingest.url, ATAS_TOKEN=token(scopes=["ingest:write"], projects=["shop"]),
                    ATAS_PROJECT="shop", **GITHUB)
    session = await asyncio.to_thread(run_pytest, suite, "--atas-environment", "staging", env=env)
    assert session.code == 1, session.output
    assert "spooled" not in session.output and not (suite / ".atas-spool").exists()

    execution, finals, attempts = await _stored(pg, _execution_id(session.output))
    _assert_stored_as_pytest_counted(session, finals, attempts)
    _assert_tests_summary(execution, session)
    assert execution["status"] == "failed" and execution["finished_at"] is not None
    assert (execution["name"], execution["environment"]) == ("pytest suite", "staging")
    assert (execution["branch"], execution["commit_sha"]) == ("main", GITHUB["GITHUB_SHA"])
    assert execution["build_url"] == "https://github.com/acme/shop/actions/runs/42"
    assert execution["attributes"]["ci"] == "github-actions"

    final = {r["test_id"]: r for r in finals}
    assert final["test_suite.py::test_skip"]["error_message"] == "not on this platform"
    assert final["test_suite.py::test_xfail"]["attributes"]["outcome"] == "xfailed"
    assert final["test_suite.py::test_xpass"]["attributes"]["outcome"] == "xpassed"
    assert final["test_suite.py::test_setup_error"]["attributes"]["phase"] == "setup"
    assert "ConnectionError: database is down" in final["test_suite.py::test_setup_error"]["error_message"]
    assert "== 43" in final["test_suite.py::test_fail"]["error_message"]
    assert final["test_suite.py::test_param[two]"]["attributes"]["markers"] == ["slow"]
    assert final["test_suite.py::test_rerun_then_pass"]["attempt"] == 2


async def test_xdist_workers_report_into_one_execution(ingest, pg, token, tmp_path):
    suite = write_suite(tmp_path / "suite")
    env = clean_env(ATAS_URL=ingest.url, ATAS_TOKEN=token(scopes=["ingest:write"], projects=["shop"]),
                    ATAS_PROJECT="shop")
    session = await asyncio.to_thread(run_pytest, suite, "-n", "2", env=env)
    assert session.code == 1 and "2 workers" in session.output, session.output

    execution, finals, attempts = await _stored(pg, _execution_id(session.output))
    _assert_stored_as_pytest_counted(session, finals, attempts)
    _assert_tests_summary(execution, session)
    assert execution["status"] == "failed" and execution["attributes"]["xdist_workers"] == 2
    assert {r["attributes"]["worker"] for r in finals} == {"gw0", "gw1"}
    # markers are read on the worker, where the test item is, and travel with the report
    assert {r["test_id"]: r for r in finals}["test_suite.py::test_param[two]"]["attributes"]["markers"] == ["slow"]
    conn = await asyncpg.connect(pg)
    try:
        assert await conn.fetchval("SELECT count(*) FROM executions") == 1
    finally:
        await conn.close()


async def test_with_atas_down_results_are_spooled_and_upload_spool_sends_them_once(ingest, pg, token, tmp_path):
    suite = write_suite(tmp_path / "suite")
    write = token(scopes=["ingest:write"], projects=["shop"])
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = clean_env(ATAS_URL=down, ATAS_TOKEN=write, ATAS_PROJECT="shop")
    session = await asyncio.to_thread(run_pytest, suite, env=env)
    assert session.code == 1, session.output  # the suite's own failures, nothing of ours
    assert session.summary()["passed"] == 5
    spools = list((suite / ".atas-spool").glob("*.jsonl"))
    assert len(spools) == 1
    assert f"atas: 12 results spooled to {spools[0]}" in session.output
    assert "ATAS unreachable" in session.output and f"atas upload-spool {spools[0]}" in session.output

    def upload(*files: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "atas.cli.main", "upload-spool", *map(str, files)],
                              env=clean_env(ATAS_URL=ingest.url, ATAS_TOKEN=write), capture_output=True,
                              text=True, timeout=60)

    first = await asyncio.to_thread(upload, spools[0])
    assert first.returncode == 0, first.stderr
    assert "12 results added, 0 already there" in first.stdout and "status failed" in first.stdout
    again = await asyncio.to_thread(upload, spools[0])
    assert again.returncode == 0 and "0 results added, 12 already there" in again.stdout

    execution_id = spools[0].stem
    execution, finals, attempts = await _stored(pg, execution_id)
    _assert_stored_as_pytest_counted(session, finals, attempts)
    assert execution["status"] == "failed"
    first_line = json.loads(spools[0].read_text().splitlines()[0])
    assert execution["started_at"].isoformat() == first_line["body"]["started_at"]



async def test_an_interrupted_session_is_cancelled_with_what_ran(ingest, pg, token, tmp_path):
    suite = write_suite(tmp_path / "suite", "def test_first():\n    pass\n\n"
                                            "def test_ctrl_c():\n    raise KeyboardInterrupt\n\n"
                                            "def test_never_run():\n    pass\n")
    env = clean_env(ATAS_URL=ingest.url, ATAS_TOKEN=token(scopes=["ingest:write"], projects=["shop"]),
                    ATAS_PROJECT="shop")
    session = await asyncio.to_thread(run_pytest, suite, env=env)
    assert session.code == pytest.ExitCode.INTERRUPTED, session.output
    execution, finals, _ = await _stored(pg, _execution_id(session.output))
    assert execution["status"] == "cancelled"
    assert {r["test_id"]: r["status"] for r in finals} == {"test_suite.py::test_first": "passed"}


LIVE_SUITE = '''
import pathlib, time

def test_a():
    pass

def test_b():
    pass

def test_waits_until_the_first_results_are_stored():
    go = pathlib.Path(__file__).with_name("go")
    deadline = time.monotonic() + 60
    while not go.exists():
        assert time.monotonic() < deadline, "the first results were not stored while the session ran"
        time.sleep(0.05)
'''


async def test_results_are_stored_while_the_session_is_still_running(ingest, pg, token, tmp_path):
    suite = write_suite(tmp_path / "suite", LIVE_SUITE)
    env = clean_env(ATAS_URL=ingest.url, ATAS_TOKEN=token(scopes=["ingest:write"], projects=["shop"]),
                    ATAS_PROJECT="shop")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", "-q"],
                            cwd=suite, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        conn = await asyncpg.connect(pg)
        try:
            async with asyncio.timeout(30):  # the sender flushes about once a second
                while await conn.fetchval("SELECT count(*) FROM results WHERE project = 'shop'") < 2:
                    assert proc.poll() is None, "the session ended before its results were stored"
                    await asyncio.sleep(0.1)
            running = await conn.fetchval("SELECT status FROM executions WHERE project = 'shop'")
        finally:
            await conn.close()
        assert running == "running"
        (suite / "go").touch()
        output, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    execution, finals, _ = await _stored(pg, _execution_id(output))
    assert execution["status"] == "passed" and len(finals) == 3


async def test_atas_going_down_mid_session_spools_the_rest_and_the_replay_completes_the_execution(
        ingest, pg, kafka_settings, token, tmp_path):
    suite = write_suite(tmp_path / "suite", LIVE_SUITE)
    write = token(scopes=["ingest:write"], projects=["shop"])
    env = clean_env(ATAS_URL=ingest.url, ATAS_TOKEN=write, ATAS_PROJECT="shop")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", "-q",
                             "--atas-timeout", "2"], cwd=suite, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        conn = await asyncpg.connect(pg)
        try:
            async with asyncio.timeout(30):
                while await conn.fetchval("SELECT count(*) FROM results WHERE project = 'shop'") < 2:
                    await asyncio.sleep(0.1)
        finally:
            await conn.close()
        ingest.stop()  # ATAS goes away with the execution created and two results stored
        (suite / "go").touch()
        output, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    spools = list((suite / ".atas-spool").glob("*.jsonl"))
    assert len(spools) == 1 and "atas: 1 results spooled to" in output, output
    assert "atas: 2 of 3 results reported" in output

    # ATAS is back: the replay recreates nothing, adds the missing result and finishes the run
    back = ServiceProcess(["serve", "ingest"], settings_env(make_settings(db_dsn=pg, kafka=kafka_settings)),
                          tmp_path, "ingest-again")
    try:
        await asyncio.to_thread(back.wait_healthy, 30, "/readyz")
        upload = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "atas.cli.main", "upload-spool", str(spools[0])],
            env=clean_env(ATAS_URL=back.url, ATAS_TOKEN=write), capture_output=True, text=True, timeout=60)
    finally:
        back.stop()
    assert upload.returncode == 0, upload.stderr
    assert "1 results added, 0 already there" in upload.stdout and "status passed" in upload.stdout
    execution, finals, attempts = await _stored(pg, spools[0].stem)
    assert execution["status"] == "passed" and attempts == len(finals) == 3
