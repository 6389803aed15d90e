"""The `tests` summary of an execution (distinct tests by their final attempt) beside its attempt
`counts`: exact through batches, retries, late and out-of-order attempts, concurrent writers,
finish and JUnit import, in answers and in events alike."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import asyncpg
import msgspec
import pytest

from atas.common.events import decode_event

from .conftest import FAST

pytestmark = pytest.mark.pg

NO_RELAY = msgspec.structs.replace(FAST, relay_enabled=False)
JUNIT = Path(__file__).resolve().parents[2] / "fixtures" / "junit"
V014 = Path(__file__).resolve().parents[3] / "libs" / "common" / "migrations" / "V014__ingest_test_summary.sql"
KEYS = ("total", "passed", "failed", "error", "skipped", "flaky")


def _r(test_id: str, status: str, attempt: int = 1) -> dict:
    return {"test_id": test_id, "name": test_id, "status": status, "attempt": attempt}


def _tests(**nonzero: int) -> dict[str, int]:
    return {k: nonzero.get(k, 0) for k in KEYS}


def recount(sent: list[dict]) -> dict[str, int]:
    """The summary from first principles: each test's highest attempt decides it."""
    by_test: dict[str, dict[int, str]] = {}
    for r in sent:
        by_test.setdefault(r["test_id"], {})[r.get("attempt", 1)] = r["status"]
    out = _tests()
    for attempts in by_test.values():
        final = attempts[max(attempts)]
        out["total"] += 1
        out[final] += 1
        out["flaky"] += final == "passed" and any(s in ("failed", "error") for s in attempts.values())
    return out


async def _events(dsn: str, execution_id: str):
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT payload FROM outbox WHERE event_key = $1 ORDER BY id", execution_id.encode())
    finally:
        await conn.close()
    return [decode_event(r["payload"]) for r in rows]


class Run:
    def __init__(self, client, headers):
        self.client, self.h, self.id = client, headers, str(uuid.uuid4())

    async def start(self) -> "Run":
        resp = await self.client.post("/v1/executions", json={"id": self.id, "project": "demo", "name": "ci"},
                                      headers=self.h)
        assert resp.status == 201, await resp.text()
        return self

    async def send(self, *results: dict) -> dict:
        resp = await self.client.post(f"/v1/executions/{self.id}/results", json={"results": list(results)},
                                      headers=self.h)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def finish(self, **body) -> dict:
        resp = await self.client.post(f"/v1/executions/{self.id}/finish", json=body, headers=self.h)
        assert resp.status == 200, await resp.text()
        return await resp.json()


@pytest.fixture
async def run(ingest, auth):
    client = await ingest(config=NO_RELAY)

    async def _new() -> Run:
        return await Run(client, auth()).start()

    return _new


async def test_batches_count_tests_by_their_final_attempt_and_events_carry_it(run, pg):
    ex = await run()
    first = await ex.send(_r("a", "passed"), _r("b", "failed"), _r("c", "error"), _r("d", "skipped"))
    assert first["tests"] == _tests(total=4, passed=1, failed=1, error=1, skipped=1)
    # reruns: b passes on its second attempt (flaky), c errors again then fails on the third
    second = await ex.send(_r("b", "passed", 2), _r("c", "error", 2), _r("c", "failed", 3))
    assert second["counts"] == {"total": 7, "passed": 2, "failed": 2, "skipped": 1, "error": 2}  # attempts
    assert second["tests"] == _tests(total=4, passed=2, failed=1, skipped=1, flaky=1)
    done = await ex.finish()
    assert done["status"] == "failed"
    assert done["tests"] == second["tests"] and done["counts"] == second["counts"]
    assert done["results_duration_ms"] == done["duration_ms"] == 0
    assert done["wall_duration_ms"] is not None and done["wall_duration_ms"] >= 0

    events = await _events(pg, ex.id)
    recorded = [e for e in events if e.type == "results.recorded"]
    assert [e.data["tests"] for e in recorded] == [first["tests"], second["tests"]]
    (finished,) = [e for e in events if e.type == "execution.finished"]
    assert finished.data["tests"] == done["tests"] and finished.data["totals"] == done["counts"]
    assert finished.data["wall_duration_ms"] == finished.data["duration_ms"] == done["wall_duration_ms"]
    assert finished.data["results_duration_ms"] == done["results_duration_ms"]


async def test_an_attempt_arriving_after_a_higher_one_does_not_replace_the_final_status(run):
    ex = await run()
    await ex.send(_r("t", "passed", 2))
    late = await ex.send(_r("t", "failed", 1))  # the failed first attempt arrives last
    assert late["tests"] == _tests(total=1, passed=1, flaky=1)
    assert late["counts"]["total"] == 2
    # a third attempt now fails: the test fails and is no longer flaky
    third = await ex.send(_r("t", "failed", 3))
    assert third["tests"] == _tests(total=1, failed=1)
    assert (await ex.finish())["status"] == "failed"


async def test_retried_batches_and_duplicates_change_nothing(run):
    ex = await run()
    batch = [_r("a", "failed"), _r("a", "passed", 2), _r("b", "passed")]
    first = await ex.send(*batch)
    again = await ex.send(*batch)  # a harness retrying after a timeout
    assert again["duplicates"] == 3 and again["tests"] == first["tests"] == _tests(total=2, passed=2, flaky=1)
    # partly new: the stored ones are skipped, the new attempt still counts
    mixed = await ex.send(_r("b", "passed"), _r("b", "error", 2))
    assert mixed["duplicates"] == 1
    assert mixed["tests"] == _tests(total=2, passed=1, error=1, flaky=1)


async def test_late_results_after_finish_update_the_summary_and_the_finished_event(run, pg):
    ex = await run()
    await ex.send(_r("a", "passed"), _r("b", "failed"))
    assert (await ex.finish())["tests"] == _tests(total=2, passed=1, failed=1)
    late = await ex.send(_r("b", "passed", 2), _r("c", "skipped"))
    assert late["tests"] == _tests(total=3, passed=2, skipped=1, flaky=1)
    finished = [e for e in await _events(pg, ex.id) if e.type == "execution.finished"]
    assert [e.data["status"] for e in finished] == ["failed", "passed"]  # derived again
    assert finished[-1].data["tests"] == late["tests"]
    assert (await ex.finish())["tests"] == late["tests"]


async def test_concurrent_batches_of_one_execution_keep_the_summary_exact(run, pg):
    """Many writers, attempts of the same tests split over them in any order (lower attempts after
    higher ones included): the stored summary equals a recount of what was sent."""
    rng = random.Random(15)
    ex = await run()
    attempts = []
    for t in range(60):
        for attempt in range(1, rng.randint(1, 4) + 1):
            attempts.append(_r(f"t{t}", rng.choice(("passed", "passed", "failed", "error", "skipped")), attempt))
    rng.shuffle(attempts)
    batches = [attempts[i::12] for i in range(12)]
    # every batch is also sent twice, concurrently, as a retrying harness would
    answers = await asyncio.gather(*(ex.send(*b) for b in batches + batches))
    assert sum(a["accepted"] for a in answers) == len(attempts)
    expected = recount(attempts)
    assert expected["flaky"] > 0 and expected["failed"] > 0
    done = await ex.finish()
    assert done["tests"] == expected and done["counts"]["total"] == len(attempts)
    conn = await asyncpg.connect(pg)
    try:
        row = await conn.fetchrow("SELECT max_attempt FROM executions WHERE id = $1", uuid.UUID(ex.id))
    finally:
        await conn.close()
    assert row["max_attempt"] == max(a["attempt"] for a in attempts)


def _header(path: Path) -> dict[str, int]:
    suite = ET.parse(path).getroot().find("testsuite")
    return {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}


async def test_a_pytest_rerunfailures_report_counts_tests_as_pytest_does(ingest, auth, pg):
    """The report of a real pytest + pytest-rerunfailures run (tests/fixtures/junit/README.md):
    every rerun attempt is kept, and the summary matches pytest's own header."""
    path = JUNIT / "pytest-rerunfailures.xml"
    assert _header(path) == {"tests": 13, "failures": 3, "errors": 1, "skipped": 2}
    client = await ingest(config=NO_RELAY)
    resp = await client.post("/v1/junit", data=path.read_bytes(), params={"project": "demo"},
                             headers={"Content-Type": "application/xml", **auth()})
    assert resp.status == 201, await resp.text()
    execution = (await resp.json())["execution"]
    tests = execution["tests"]
    assert {k: tests[k] for k in ("total", "passed", "failed", "error", "skipped")} == {
        "total": 13, "passed": 7, "failed": 3, "error": 1, "skipped": 2}
    assert tests["flaky"] == 2  # the two tests that passed on their rerun
    # 13 tests and 6 reruns: every attempt stored, the reruns as the failures they were
    assert execution["counts"] == {"total": 19, "passed": 7, "failed": 8, "error": 2, "skipped": 2}
    assert execution["status"] == "failed"
    (finished,) = [e for e in await _events(pg, execution["id"]) if e.type == "execution.finished"]
    assert finished.data["tests"] == tests


async def test_the_migration_backfills_the_summary_of_existing_executions(run, pg):
    ex = await run()
    sent = [_r("a", "failed"), _r("a", "passed", 3), _r("a", "error", 2), _r("b", "skipped"), _r("c", "error"),
            _r("d", "passed", 2)]
    await ex.send(*sent)
    backfill = V014.read_text()
    backfill = backfill[backfill.index("UPDATE executions e"):]
    assert re.search(r"WHERE e\.id = s\.execution_id;\s*$", backfill)
    conn = await asyncpg.connect(pg)
    try:
        # as an execution written before V014 was: the columns at their defaults
        await conn.execute("UPDATE executions SET tests_total = 0, tests_passed = 0, tests_failed = 0, "
                           "tests_skipped = 0, tests_errored = 0, tests_flaky = 0, max_attempt = 1 "
                           "WHERE id = $1", uuid.UUID(ex.id))
        await conn.execute(backfill)
        row = await conn.fetchrow("SELECT tests_total, tests_passed, tests_failed, tests_skipped, tests_errored, "
                                  "tests_flaky, max_attempt FROM executions WHERE id = $1", uuid.UUID(ex.id))
    finally:
        await conn.close()
    expected = recount(sent)
    assert expected == _tests(total=4, passed=2, skipped=1, error=1, flaky=1)
    assert tuple(row) == (expected["total"], expected["passed"], expected["failed"], expected["skipped"],
                          expected["error"], expected["flaky"], 3)
    # and the writer carries on from the backfilled numbers
    assert (await ex.send(_r("c", "passed", 2)))["tests"] == _tests(total=4, passed=3, skipped=1, flaky=2)
