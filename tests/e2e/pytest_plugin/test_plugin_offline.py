"""The pytest plugin without a working ATAS: off unless configured (and then invisible, even under
``-W error``), a usage error only for an incomplete command line, and a hanging server costs the
session at most ``--atas-timeout`` before its results are spooled. No servers needed."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from .sessions import clean_env, run_pytest, write_suite

pytestmark = pytest.mark.e2e


def test_installed_but_not_configured_the_plugin_changes_nothing(tmp_path):
    suite = write_suite(tmp_path / "suite")
    plain = run_pytest(suite, "-p", "no:atas", env=clean_env())
    # ATAS_URL and ATAS_TOKEN alone (as `atas dev` exports them for the CLI) do not switch it on
    for env in (clean_env(), clean_env(ATAS_URL="http://127.0.0.1:9", ATAS_TOKEN="t")):
        session = run_pytest(suite, env=env)
        assert session.code == plain.code == 1
        assert session.summary() == plain.summary()
        assert not [line for line in session.output.splitlines() if line.startswith("atas:")]
        assert "warning" not in session.output.lower()  # the suite runs with filterwarnings = error
        assert not (suite / ".atas-spool").exists()


def test_its_options_are_documented_in_pytest_help(tmp_path):
    session = run_pytest(write_suite(tmp_path / "suite"), "--help", env=clean_env())
    for option in ("--atas-url", "--atas-token", "--atas-project", "--atas-name", "--atas-environment",
                   "--atas-spool-dir", "--atas-timeout"):
        assert option in session.output
    assert "ATAS_PROJECT" in session.output


def test_an_incomplete_command_line_is_a_usage_error_that_names_what_is_missing(tmp_path):
    session = run_pytest(write_suite(tmp_path / "suite"), "--atas-url", "http://127.0.0.1:9", env=clean_env())
    assert session.code == pytest.ExitCode.USAGE_ERROR
    assert "--atas-token (or ATAS_TOKEN) and --atas-project (or ATAS_PROJECT)" in session.output


def test_an_invalid_project_key_turns_reporting_off_not_the_suite(tmp_path):
    suite = write_suite(tmp_path / "suite")
    session = run_pytest(suite, env=clean_env(ATAS_URL="http://127.0.0.1:9", ATAS_TOKEN="t",
                                              ATAS_PROJECT="my project"))
    assert session.code == 1 and session.summary()["passed"] == 5
    assert "atas: not reporting: the execution would be refused" in session.output and "project" in session.output


def test_a_hanging_atas_costs_the_session_at_most_its_timeout_and_loses_nothing(tmp_path):
    suite = write_suite(tmp_path / "suite")
    plain = run_pytest(suite, "-p", "no:atas", env=clean_env())
    # A server that accepts connections (the kernel completes the handshake) and never answers.
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(64)
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}"
        session = run_pytest(suite, "--atas-timeout", "3", env=clean_env(ATAS_URL=url, ATAS_TOKEN="t",
                                                                          ATAS_PROJECT="shop"))
    assert session.code == 1 and session.summary() == plain.summary()
    # At most 3 s at the end to deliver the rest, plus noise on a shared machine. Waiting for each
    # request to time out (create, results, finish: 2 attempts of 3 s each) would take 18 s.
    assert session.seconds < plain.seconds + 8, (session.seconds, plain.seconds)
    assert "ATAS did not answer within 3 s" in session.output or "ATAS unreachable" in session.output
    spools = list((suite / ".atas-spool").glob("*.jsonl"))
    assert len(spools) == 1 and "spooled to" in session.output

    from atas.pytest_plugin.spool import read_spool

    spool = read_spool(spools[0])
    stored = {(r["test_id"], r["attempt"]) for batch in spool.batches for r in batch}
    assert len(stored) == 12 and spool.finish is not None and spool.execution["project"] == "shop"


def test_upload_spool_refuses_a_file_that_is_not_a_spool(tmp_path):
    bogus = tmp_path / "x.jsonl"
    bogus.write_text('{"hello": 1}\n{"v": 1}\n')
    proc = subprocess.run([sys.executable, "-m", "atas.cli.main", "upload-spool", str(bogus)],
                          env=clean_env(ATAS_URL="http://127.0.0.1:9", ATAS_TOKEN="t"), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "x.jsonl:1: not a version 1 spool record" in proc.stderr
