"""Dashboard aggregates on real PostgreSQL and Redis equal a recount of the generated rows in Python."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from atas.query.rollups import settle
from tests.conftest import make_settings
from tests.integration.query.conftest import Dataset, query_client

pytestmark = [pytest.mark.pg, pytest.mark.redis]

NOW = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
START = (NOW - timedelta(days=6)).replace(hour=0)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def in_scope(e, start, end, environment=None, branch=None) -> bool:
    return (e.project == "demo" and start <= e.started_at < end
            and (environment is None or e.environment == environment)
            and (branch is None or e.branch == branch))


@pytest.fixture
async def populated(dataset: Dataset):
    execs = dataset.make("demo", START, count=160, span=timedelta(days=6, hours=20), tests=14)
    other = dataset.make("other", START, count=20, span=timedelta(days=6), tests=5)
    await dataset.write(execs + other)
    return dataset


def close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < 0.01


@pytest.mark.parametrize("environment", [None, "ci"])
async def test_overview_equals_a_recount(pg, redis_settings, token, populated, environment):
    start, end = START + timedelta(hours=30), NOW - timedelta(hours=5)
    execs = [e for e in populated.executions if in_scope(e, start, end, environment)]
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    params = {"project": "demo", "from": iso(start), "to": iso(end), "limit": "5"}
    if environment:
        params["environment"] = environment
    async with query_client(settings) as client:
        resp = await client.get("/v1/dashboard/overview", params=params,
                                headers={"Authorization": f"Bearer {token()}"})
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Cache"] == "miss"
        body = await resp.json()
        again = await client.get("/v1/dashboard/overview", params=params,
                                 headers={"Authorization": f"Bearer {token()}"})
        assert again.headers["X-Cache"] == "hit"
        assert await again.json() == body
        assert again.headers["ETag"] == resp.headers["ETag"]

    assert body["executions"] == len(execs)
    for status in ("running", "passed", "failed", "error", "cancelled"):
        assert body["executions_by_status"][status] == sum(1 for e in execs if e.status == status)
    results = [r for e in execs for r in e.results]
    assert body["results"] == len(results)
    by_status = {s: sum(1 for r in results if r.status == s) for s in ("passed", "failed", "skipped", "error")}
    assert body["results_by_status"] == by_status  # per attempt
    assert close(body["attempt_pass_rate"],
                 by_status["passed"] / (by_status["passed"] + by_status["failed"] + by_status["error"]))
    tests = {k: sum(e.tests()[k] for e in execs) for k in ("total", "passed", "failed", "error", "skipped", "flaky")}
    assert body["tests"] == tests and tests["flaky"] > 0  # the dataset retries some failures into passes
    assert close(body["pass_rate"], tests["passed"] / (tests["passed"] + tests["failed"] + tests["error"]))
    assert body["pass_rate"] != body["attempt_pass_rate"]
    durations = [e.duration_ms for e in execs if e.status != "running"]
    assert close(body["duration"]["mean_ms"], sum(durations) / len(durations))
    assert close(body["duration"]["p95_ms"], percentile(durations, 0.95))

    # top failing tests cover whole UTC days around the range
    lo = start.replace(hour=0, minute=0, second=0, microsecond=0)
    hi = end.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert body["top_failing_range"] == {"from": iso(lo), "to": iso(hi)}
    failures: dict[str, int] = defaultdict(int)
    for e in populated.executions:
        if in_scope(e, lo, hi, environment):
            for r in e.results:
                if r.status in ("failed", "error"):
                    failures[r.test_id] += 1
    expected = sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert [(t["test_id"], t["failures"]) for t in body["top_failing_tests"]] == expected


@pytest.mark.parametrize("bucket", ["hour", "day", "week"])
async def test_trends_equal_a_recount_per_bucket(pg, redis_settings, token, populated, bucket):
    start, end = START, NOW
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    async with query_client(settings) as client:
        resp = await client.get("/v1/trends", params={"project": "demo", "from": iso(start), "to": iso(end),
                                                      "bucket": bucket, "branch": "main"},
                                headers={"Authorization": f"Bearer {token()}"})
        assert resp.status == 200, await resp.text()
        body = await resp.json()

    def trunc(t: datetime) -> datetime:
        t = t.replace(minute=0, second=0, microsecond=0)
        if bucket in ("day", "week"):
            t = t.replace(hour=0)
        if bucket == "week":
            t -= timedelta(days=t.weekday())
        return t

    groups = defaultdict(list)
    for e in populated.executions:
        if in_scope(e, start, end, branch="main"):
            groups[trunc(e.started_at)].append(e)
    first, last = trunc(start), trunc(end - timedelta(microseconds=1))
    step = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[bucket]
    expected_starts = []
    t = first
    while t <= last:
        expected_starts.append(iso(t))
        t += step
    assert [b["start"] for b in body["buckets"]] == expected_starts
    for b in body["buckets"]:
        execs = groups.get(datetime.fromisoformat(b["start"]), [])
        assert b["executions"] == len(execs)
        results = [r for e in execs for r in e.results]
        assert b["results"] == len(results)
        assert b["results_by_status"]["failed"] == sum(1 for r in results if r.status == "failed")
        tests = {k: sum(e.tests()[k] for e in execs) for k in ("total", "passed", "failed", "error", "skipped",
                                                                "flaky")}
        assert b["tests"] == tests
        judged = tests["passed"] + tests["failed"] + tests["error"]
        assert close(b["pass_rate"], tests["passed"] / judged if judged else None)
        assert b["executions_by_status"]["running"] == sum(1 for e in execs if e.status == "running")
        durations = [e.duration_ms for e in execs if e.status != "running"]
        assert close(b["duration_p50_ms"], percentile(durations, 0.5))
        assert close(b["duration_p95_ms"], percentile(durations, 0.95))


@pytest.mark.parametrize("filters", [{}, {"environment": "ci"}, {"branch": "main"},
                                     {"environment": "staging", "branch": "dev"}])
async def test_per_test_lists_equal_a_recount(pg, redis_settings, token, populated, filters):
    start, end = START + timedelta(days=1), NOW - timedelta(days=1)  # whole days already
    start, end = start.replace(hour=0), end.replace(hour=0)
    execs = [e for e in populated.executions if in_scope(e, start, end, **filters)]
    params = {"project": "demo", "from": iso(start), "to": iso(end), "limit": "200", **filters}
    headers = {"Authorization": f"Bearer {token()}"}
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    async with query_client(settings) as client:
        failing = await (await client.get("/v1/tests/failing", params=params, headers=headers)).json()
        slowest = await (await client.get("/v1/tests/slowest", params=params, headers=headers)).json()
        flaky = await (await client.get("/v1/tests/flaky", params=params, headers=headers)).json()

    runs, fails, dsum = defaultdict(int), defaultdict(int), defaultdict(int)
    passed_on, failed_on, retry_passes = defaultdict(set), defaultdict(set), defaultdict(int)
    executions_of = defaultdict(int)  # (commit, environment) -> executions in scope
    for e in execs:
        executions_of[(e.commit, e.environment)] += 1
    for e in execs:
        rerun = executions_of[(e.commit, e.environment)] > 1
        final = {}  # test -> its final attempt in this execution
        for r in e.results:
            runs[r.test_id] += 1
            dsum[r.test_id] += r.duration_ms
            if r.status in ("failed", "error"):
                fails[r.test_id] += 1
            if r.status == "passed" and r.attempt > 1:
                retry_passes[r.test_id] += 1
            if r.test_id not in final or r.attempt > final[r.test_id].attempt:
                final[r.test_id] = r
        # Re-runs of a commit that disagree on a test's final outcome make a flaky commit.
        for test_id, r in final.items() if rerun else ():
            if r.status in ("failed", "error"):
                failed_on[test_id].add((e.commit, e.environment))
            elif r.status == "passed":
                passed_on[test_id].add((e.commit, e.environment))

    assert [(t["test_id"], t["failures"], t["runs"]) for t in failing["items"]] == sorted(
        ((t, fails[t], runs[t]) for t in fails), key=lambda x: (-x[1], x[0]))
    assert [(t["test_id"], t["runs"]) for t in slowest["items"]] == [
        (t, runs[t]) for t in sorted(runs, key=lambda t: (-dsum[t] / runs[t], t))]
    for t in slowest["items"]:
        assert close(t["mean_ms"], dsum[t["test_id"]] / runs[t["test_id"]])
    expected_flaky = {t: (len(passed_on[t] & failed_on[t]), retry_passes[t]) for t in runs
                      if passed_on[t] & failed_on[t] or retry_passes[t]}
    assert {t["test_id"]: (t["flaky_commits"], t["retry_passes"]) for t in flaky["items"]} == expected_flaky
    assert expected_flaky, "the generated data should contain flaky tests"


async def test_test_history_pages_through_every_attempt(pg, redis_settings, token, populated):
    test_id = "tests/test_m1.py::test_4"
    expected = sorted(((r.execution_started_at, str(r.execution_id), r.attempt, r.status)
                       for e in populated.executions if e.project == "demo" for r in e.results
                       if r.test_id == test_id), reverse=True)
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    got = []
    async with query_client(settings) as client:
        url = f"/v1/tests/{test_id.replace('/', '%2F')}/history"
        params = {"project": "demo", "from": iso(START - timedelta(days=1)), "to": iso(NOW + timedelta(days=1)),
                  "limit": "7"}
        while True:
            resp = await client.get(url, params=params, headers={"Authorization": f"Bearer {token()}"})
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            got.extend((datetime.fromisoformat(i["execution_started_at"]), i["execution_id"], i["attempt"],
                        i["status"]) for i in body["items"])
            if body["next_cursor"] is None:
                assert "Link" not in resp.headers
                break
            assert 'rel="next"' in resp.headers["Link"]
            params["cursor"] = body["next_cursor"]
    assert got == expected


async def test_execution_results_filter_by_status_and_page(pg, redis_settings, token, populated):
    execution = max((e for e in populated.executions if e.project == "demo"), key=lambda e: len(e.results))
    expected = sorted((r.test_id, r.attempt) for r in execution.results if r.status in ("failed", "error"))
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    got = []
    params = {"project": "demo", "status": "failed,error", "limit": "2"}
    async with query_client(settings) as client:
        while True:
            resp = await client.get(f"/v1/executions/{execution.id}/results", params=params,
                                    headers={"Authorization": f"Bearer {token()}"})
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            got.extend((i["test_id"], i["attempt"]) for i in body["items"])
            if not body["next_cursor"]:
                break
            params["cursor"] = body["next_cursor"]
        status = await client.get(f"/v1/executions/{execution.id}", params={"project": "demo"},
                                  headers={"Authorization": f"Bearer {token()}"})
        view = await status.json()
    assert got == expected
    assert view["counts"] == {"total": len(execution.results),
                              **{s: execution.count(s) for s in ("passed", "failed", "skipped", "error")}}
    assert view["tests"] == execution.tests()
    assert view["status"] == execution.status and view["total"] == len(execution.results)  # deprecated alias
    assert view["results_duration_ms"] == view["duration_ms"] == execution.duration_ms
    assert view["wall_duration_ms"] == (None if execution.finished_at is None else 5 * 60 * 1000)


async def test_rollups_follow_deleted_results(pg, redis_settings, token, populated):
    """Results deleted by statement are subtracted from both rollups (no recount drift)."""
    victims = [e for e in populated.executions if e.project == "demo"][:10]
    async with populated.pool.acquire() as conn:
        await conn.execute("DELETE FROM results WHERE execution_id = ANY($1::uuid[])", [e.id for e in victims])
    await settle(populated.pool)
    for e in victims:
        e.results.clear()
    start, end = START, NOW.replace(hour=0) + timedelta(days=1)
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    async with query_client(settings) as client:
        for filters in ({}, {"branch": "main"}):
            params = {"project": "demo", "from": iso(start), "to": iso(end), "limit": "200", **filters}
            got = await (await client.get("/v1/tests/failing", params=params,
                                          headers={"Authorization": f"Bearer {token()}"})).json()
            fails, runs = defaultdict(int), defaultdict(int)
            for e in populated.executions:
                if in_scope(e, start, end, **filters):
                    for r in e.results:
                        runs[r.test_id] += 1
                        fails[r.test_id] += r.status in ("failed", "error")
            assert {t["test_id"]: (t["failures"], t["runs"]) for t in got["items"]} == {
                t: (n, runs[t]) for t, n in fails.items() if n}
