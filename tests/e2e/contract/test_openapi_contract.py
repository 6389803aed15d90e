"""The published contract, checked with the tools clients use (issue #21).

Every service (`atas serve ingest|query|stream` as processes on real PostgreSQL, Redis and Kafka):
its `/openapi.json` passes a standard OpenAPI 3.1 validator, every `pattern` in it compiles as an
ECMA-262 regex in Node and accepts and refuses the same samples there as in Python (msgspec
enforces them with `re`), and Schemathesis finds no server error, no undocumented status code or
content type and no response that breaks its schema.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from tests.conftest import make_settings, settings_env
from tests.helpers import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.pg, pytest.mark.redis, pytest.mark.kafka, pytest.mark.s3]

SERVICES = ("ingest", "query", "stream")
# Every pattern published, with values it must accept and refuse. An unknown pattern fails the
# test: a new one needs its samples here.
SAMPLES = {
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$(?!\n)": (
        ["demo", "web", "a", "team.web_2-x", "A" * 128],
        ["", "demo\n", "bad key", "-web", ".x", "A" * 129, "ünï", "demo\r", "x/y"]),
    r"^[^\x00-\x1f\x7f]*$(?!\n)": (
        ["", "main", "feature/x y", "ünïcode", "release/2.4"],
        ["a\nb", "main\n", "tab\there", "nul\x00", "del\x7f"]),
    r"^[0-9a-fA-F]{64}$(?!\n)": (  # an attachment's sha256
        ["0" * 64, "ab" * 32, "AB" * 32],
        ["0" * 63, "0" * 65, "0" * 64 + "\n", "g" * 64, ""]),
}
# Bounded so that the three runs add about a minute to the suite.
MAX_EXAMPLES = "15"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture
def services(pg, redis_settings, kafka_settings, storage_settings, s3_server, tmp_path):
    env = settings_env(make_settings(db_dsn=pg, redis=redis_settings, kafka=kafka_settings))
    # Attachments on: the fuzzer drives their routes against the real S3-compatible server.
    env.update(s3_server, STORAGE_URL=f"s3://{storage_settings.bucket}/{storage_settings.prefix}".rstrip("/"))
    procs = {name: ServiceProcess(["serve", name], env, tmp_path, name) for name in SERVICES}
    try:
        for proc in procs.values():
            proc.wait_healthy()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def _document(proc: ServiceProcess) -> dict:
    with urllib.request.urlopen(proc.url + "/openapi.json", timeout=10) as resp:
        return json.load(resp)


def _patterns(node) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                found.add(value)
            else:
                found |= _patterns(value)
    elif isinstance(node, list):
        for value in node:
            found |= _patterns(value)
    return found


_NODE = """
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = cases.map(([pattern, samples]) => {
  const re = new RegExp(pattern, 'u');  // JSON Schema: ECMA-262, Unicode
  return samples.map((s) => re.test(s));
});
console.log(JSON.stringify(out));
"""


def test_every_openapi_document_is_valid_31_and_its_patterns_mean_the_same_in_javascript(services):
    import re

    node = shutil.which("node")
    assert node, "node is needed to compile the patterns as ECMA-262"
    patterns: set[str] = set()
    for name, proc in services.items():
        doc = _document(proc)
        assert doc["openapi"].startswith("3.1")
        validate(doc)  # openapi-spec-validator: raises on any violation of OpenAPI 3.1
        patterns |= _patterns(doc)
        if name == "query":
            for path in ("/v1/executions/{id}", "/v1/executions/{id}/results"):
                assert "404" in doc["paths"][path]["get"]["responses"], path
    assert patterns and patterns <= set(SAMPLES), f"patterns without samples: {patterns - set(SAMPLES)}"
    cases = [(p, SAMPLES[p][0] + SAMPLES[p][1]) for p in sorted(patterns)]
    done = subprocess.run([node, "-e", _NODE], input=json.dumps(cases), capture_output=True, text=True,
                          timeout=30, check=True)
    for (pattern, samples), got in zip(cases, json.loads(done.stdout), strict=True):
        valid, invalid = SAMPLES[pattern]
        expected = [True] * len(valid) + [False] * len(invalid)
        assert got == expected, (pattern, list(zip(samples, got)))
        # msgspec applies the same pattern with Python's re.search: it must agree
        assert [re.search(pattern, s) is not None for s in samples] == expected, pattern


def _schemathesis(proc: ServiceProcess, token: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [str(cli), "run", proc.url + "/openapi.json", "--checks", CHECKS, "--max-examples", MAX_EXAMPLES,
         "--seed", "21", "--header", f"Authorization: Bearer {token}", "--request-timeout", "20",
         "--no-color", "--report-dir", str(tmp_path / "schemathesis"), *extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_schemathesis_finds_nothing_on_any_service(services, token, tmp_path):
    tokens = {
        "ingest": token(scopes=["ingest:write"], projects=["*"]),
        "query": token(scopes=["query:read"], projects=["*"]),
        # A stream that is allowed answers 200 and never ends; the fuzzer gets a project it will not
        # generate, so every valid request is refused (403) while parameters are still validated.
        "stream": token(scopes=["stream:read"], projects=["zz-fuzz-only-project-0x7f"]),
    }
    for name, proc in services.items():
        done = _schemathesis(proc, tokens[name], tmp_path)
        assert done.returncode == 0, f"{name}:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
        assert "passed" in done.stdout, done.stdout[-2000:]
