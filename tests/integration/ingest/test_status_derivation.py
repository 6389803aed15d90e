"""The status of an execution finished without one: derived from the final attempt of each test,
and derived again when results arrive after finish. A status the client sent never changes."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec
import pytest

from atas.common.events import decode_event

from .conftest import FAST

pytestmark = pytest.mark.pg

NO_RELAY = msgspec.structs.replace(FAST, relay_enabled=False)


def _r(test_id: str, status: str, attempt: int = 1) -> dict:
    return {"test_id": test_id, "name": test_id, "status": status, "attempt": attempt}


async def _outbox(dsn: str, execution_id: str):
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT payload FROM outbox WHERE event_key = $1 ORDER BY id",
                                execution_id.encode())
    finally:
        await conn.close()
    return [decode_event(r["payload"]) for r in rows]


async def _finished(dsn: str, execution_id: str) -> list[tuple[int, str]]:
    """(seq, status) of every execution.finished event of the execution, in outbox order."""
    return [(e.seq, e.data["status"]) for e in await _outbox(dsn, execution_id) if e.type == "execution.finished"]


class Run:
    """One execution driven over the API, as a harness would."""

    def __init__(self, client, headers):
        self.client, self.h = client, headers
        self.id = str(uuid.uuid4())

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

    async def status(self) -> str:
        """The stored status (finishing again without a status changes nothing and returns it)."""
        return (await self.finish())["status"]


@pytest.fixture
async def run(ingest, auth):
    client = await ingest(config=NO_RELAY)

    async def _new() -> Run:
        return await Run(client, auth()).start()

    return _new


async def test_a_test_that_passed_on_retry_does_not_fail_the_execution(run, pg):
    ex = await run()
    # attempt 1 fails in one batch (rerun plugins report as they go), the retry passes in the next
    await ex.send(_r("a", "passed"), _r("flaky", "failed", 1), _r("s", "skipped"))
    await ex.send(_r("flaky", "passed", 2))
    done = await ex.finish()
    assert done["status"] == "passed"
    assert done["counts"] == {"total": 4, "passed": 2, "failed": 1, "skipped": 1, "error": 0}  # every attempt
    assert [s for _, s in await _finished(pg, ex.id)] == ["passed"]


@pytest.mark.parametrize("attempts,expected", [
    ((("failed", 1), ("failed", 2)), "failed"),        # failed every retry
    ((("passed", 1), ("failed", 2)), "failed"),        # the final attempt is what counts
    ((("error", 1), ("failed", 2)), "failed"),
    ((("failed", 1), ("error", 2)), "error"),          # an earlier failure is forgiven, the error is not
    ((("error", 1), ("passed", 2), ("skipped", 3)), "passed"),
])
async def test_the_final_attempt_of_each_test_decides(run, pg, attempts, expected):
    ex = await run()
    await ex.send(_r("ok", "passed"), *(_r("t", status, n) for status, n in attempts))
    assert (await ex.finish())["status"] == expected
    assert [s for _, s in await _finished(pg, ex.id)] == [expected]


async def test_a_failure_outranks_an_error_across_tests(run):
    ex = await run()
    await ex.send(_r("e", "error"), _r("f", "failed"), _r("g", "failed", 1), _r("g", "passed", 2))
    assert (await ex.finish())["status"] == "failed"


async def test_late_results_change_a_derived_status_and_emit_finished_again(run, pg):
    ex = await run()
    await ex.send(_r("a", "passed"), _r("b", "passed"))
    done = await ex.finish()
    assert done["status"] == "passed"

    late = await ex.send(_r("c", "failed"))  # a shard that reported after the finish call
    assert late["counts"]["failed"] == 1
    assert await ex.status() == "failed"
    events = await _outbox(pg, ex.id)
    assert [e.type for e in events] == ["execution.started", "results.recorded", "execution.finished",
                                        "results.recorded", "execution.finished"]
    first, second = [e for e in events if e.type == "execution.finished"]
    assert (first.data["status"], second.data["status"]) == ("passed", "failed")
    assert second.seq == events[3].seq + 1 and second.id != first.id
    assert second.data["totals"]["failed"] == 1 and second.data["totals"]["total"] == 3
    assert second.data["finished_at"] == first.data["finished_at"]  # the run ended when it ended

    # the retry of that test passes: back to passed, a third finished event
    await ex.send(_r("c", "passed", 2))
    assert await ex.status() == "passed"
    assert [s for _, s in await _finished(pg, ex.id)] == ["passed", "failed", "passed"]

    # late results that change nothing (another pass, a retried batch) emit no finished event
    await ex.send(_r("d", "passed"))
    again = await ex.send(_r("c", "passed", 2))
    assert again["duplicates"] == 1
    assert [s for _, s in await _finished(pg, ex.id)] == ["passed", "failed", "passed"]
    seqs = [e.seq for e in await _outbox(pg, ex.id)]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_an_explicit_status_is_never_changed_by_late_results(run, pg):
    ex = await run()
    await ex.send(_r("a", "passed"))
    assert (await ex.finish(status="passed"))["status"] == "passed"
    await ex.send(_r("b", "failed"), _r("c", "error"))
    assert await ex.status() == "passed"
    assert [s for _, s in await _finished(pg, ex.id)] == ["passed"]

    cancelled = await run()
    await cancelled.send(_r("a", "failed"))
    assert (await cancelled.finish(status="cancelled"))["status"] == "cancelled"
    await cancelled.send(_r("a", "passed", 2))
    assert await cancelled.status() == "cancelled"
    assert [s for _, s in await _finished(pg, cancelled.id)] == ["cancelled"]


async def test_confirming_a_derived_status_explicitly_pins_it(run, pg):
    ex = await run()
    await ex.send(_r("a", "failed"))
    assert (await ex.finish())["status"] == "failed"
    assert (await ex.finish(status="failed"))["status"] == "failed"  # same status, now explicit
    await ex.send(_r("a", "passed", 2))  # would have turned a derived status into passed
    assert await ex.status() == "failed"
    assert [s for _, s in await _finished(pg, ex.id)] == ["failed"]


async def test_a_different_explicit_status_after_a_derived_one_is_a_conflict(run):
    ex = await run()
    await ex.send(_r("a", "failed"))
    await ex.finish()
    resp = await ex.client.post(f"/v1/executions/{ex.id}/finish", json={"status": "passed"}, headers=ex.h)
    assert resp.status == 409
    assert "derived" in (await resp.json())["error"]["message"]


async def test_concurrent_late_batches_end_on_the_status_of_every_final_attempt(run, pg):
    """Late batches of one execution race each other; whatever order they commit in, the stored
    status and the last execution.finished event agree with the final attempts of all results."""
    runs = [await run() for _ in range(6)]
    for ex in runs:
        await ex.send(_r("a", "passed"))
        assert (await ex.finish())["status"] == "passed"

    async def race(ex: Run) -> None:
        # attempt 1 fails and attempt 2 passes, in separate concurrent requests; plus unrelated passes
        await asyncio.gather(ex.send(_r("x", "failed", 1)), ex.send(_r("x", "passed", 2)),
                             ex.send(*(_r(f"p{i}", "passed") for i in range(20))))

    await asyncio.gather(*(race(ex) for ex in runs))
    for ex in runs:
        assert await ex.status() == "passed"
        finished = await _finished(pg, ex.id)
        assert max(finished)[1] == "passed"  # the highest seq tells the current status
        assert len(finished) in (1, 3)  # passed, or passed → failed → passed when attempt 1 committed first


# ----------------------------------------------------------------------------- JUnit import

_SUREFIRE_FLAKY = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.example.CheckoutTest" time="0.02" tests="2" errors="0" skipped="0" failures="0" flakes="1">
  <testcase name="pays" classname="com.example.CheckoutTest" time="0.01"/>
  <testcase name="flakyPassesOnSecondRun" classname="com.example.CheckoutTest" time="0.007">
    <flakyFailure message="first run fails" type="org.opentest4j.AssertionFailedError">
      <stackTrace>org.opentest4j.AssertionFailedError: first run fails</stackTrace>
    </flakyFailure>
  </testcase>
</testsuite>
"""

# pytest-rerunfailures with --junitxml: a rerun is the same testcase again, the final one last.
_RERUN_THEN = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="2">
  <testcase classname="tests.test_api" name="test_login" time="0.1"/>
  <testcase classname="tests.test_api" name="test_orders" time="0.2"><failure message="boom">E boom</failure></testcase>
  <testcase classname="tests.test_api" name="test_orders" time="0.2">%s</testcase>
</testsuite></testsuites>
"""


@pytest.mark.parametrize("report,expected", [
    (_SUREFIRE_FLAKY, "passed"),
    (_RERUN_THEN % b"", "passed"),
    (_RERUN_THEN % b'<failure message="boom again">E boom</failure>', "failed"),
], ids=["surefire-flaky", "rerun-passed", "rerun-failed"])
async def test_a_junit_report_is_judged_by_the_final_attempts(ingest, auth, pg, report, expected):
    client = await ingest(config=NO_RELAY)
    resp = await client.post("/v1/junit", data=report, params={"project": "demo"},
                             headers={"Content-Type": "application/xml", **auth()})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["execution"]["counts"]["failed"] >= 1  # failed attempts are kept
    assert body["execution"]["status"] == expected
    assert [s for _, s in await _finished(pg, body["execution"]["id"])] == [expected]
