"""Helpers of the plugin's end-to-end tests: a small real test suite, a pytest subprocess that runs
it, and what pytest itself said about it (its --junitxml report and its terminal summary line)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from defusedxml import ElementTree

# A suite with every outcome pytest knows. Its rerun-then-pass test counts its attempts in a file
# (a module-level list would do too, but a file also survives an xdist worker restart).
SUITE = '''
import pathlib
import pytest

def test_pass():
    pass

def test_fail():
    assert 6 * 7 == 43

@pytest.fixture
def database():
    raise ConnectionError("database is down")

def test_setup_error(database):
    pass

@pytest.mark.skip(reason="not on this platform")
def test_skip():
    pass

@pytest.mark.xfail(reason="known bug #12")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed already")
def test_xpass():
    pass

@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 3], ids=["one", "two", "three"])
def test_param(n):
    assert n != 3

@pytest.mark.flaky(reruns=2)
def test_rerun_then_pass():
    marker = pathlib.Path(__file__).with_name("attempts")
    attempts = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(attempts))
    assert attempts >= 2, "fails the first time"

class TestCart:
    def test_total(self):
        assert sum([1, 2]) == 3
'''

INI = """[pytest]
markers =
    slow: a slow test
filterwarnings = error
"""

_SUMMARY = re.compile(r"(\d+) (failed|passed|skipped|xfailed|xpassed|errors?|warnings?|reruns?|deselected)\b")


def write_suite(directory: Path, suite: str = SUITE) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text(INI)
    (directory / "test_suite.py").write_text(suite)
    return directory


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that configures ATAS, pytest or a CI."""
    drop = ("ATAS_", "PYTEST_", "GITHUB_", "GITLAB", "CI_", "BUILDKITE", "CIRCLE", "TF_BUILD", "JENKINS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


class Session:
    """A finished pytest subprocess: exit code, output, seconds it took, and its junit report."""

    def __init__(self, proc: subprocess.CompletedProcess, seconds: float, junit: Path):
        self.code = proc.returncode
        self.output = proc.stdout + proc.stderr
        self.seconds = seconds
        self.junit = junit

    def summary(self) -> dict[str, int]:
        """pytest's final line, e.g. ``1 failed, 6 passed, ... in 0.5s`` → {"failed": 1, ...}."""
        line = [ln for ln in self.output.splitlines() if re.search(r" in [\d.]+s", ln)][-1]
        counts = {}
        for number, word in _SUMMARY.findall(line):
            counts[word.rstrip("s") if word not in ("passed",) else word] = int(number)
        return counts

    def junit_header(self) -> dict[str, int]:
        suite = ElementTree.parse(self.junit).getroot().find("testsuite")
        return {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}

    def junit_outcomes(self) -> dict[str, str]:
        """Each testcase's outcome as pytest wrote it, keyed by the pytest node id."""
        out = {}
        for case in ElementTree.parse(self.junit).getroot().iter("testcase"):
            module = case.get("classname").split(".")
            # classname "test_suite.TestCart", name "test_total" → "test_suite.py::TestCart::test_total"
            nodeid = f"{module[0]}.py::" + "::".join(module[1:] + [case.get("name")])
            kinds = {child.tag for child in case}
            out[nodeid] = ("error" if "error" in kinds else "failed" if "failure" in kinds
                           else "skipped" if "skipped" in kinds else "passed")
        return out


def run_pytest(directory: Path, *args: str, env: dict[str, str], timeout: float = 120) -> Session:
    junit = directory / "junit.xml"
    (directory / "attempts").unlink(missing_ok=True)  # every session starts with a failing first attempt
    started = time.monotonic()
    # pytest-asyncio (installed for ATAS's own tests) warns about its unset loop scope, which the
    # suite's filterwarnings = error would turn into an error; the suite has no async tests.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", "-rA",
                           f"--junitxml={junit}", *args], cwd=directory, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return Session(proc, time.monotonic() - started, junit)


FINAL_ATTEMPTS = """
SELECT DISTINCT ON (test_id) test_id, attempt, status, error_message, attributes
FROM results WHERE execution_id = $1 ORDER BY test_id, attempt DESC
"""
