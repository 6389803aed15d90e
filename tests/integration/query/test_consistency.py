"""Numbers and pages a user can cross-check: the overview's top failing tests agree with
``/v1/tests/failing``, its documented default limit holds, and history pages without a range
neither skip nor repeat rows when the clock moves between pages."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from atas.query import routes
from tests.conftest import make_settings
from tests.integration.query.conftest import Dataset, Exec, Row, query_client
from tests.integration.query.test_aggregates import iso

pytestmark = [pytest.mark.pg, pytest.mark.redis]

DAY0 = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=5)


def _exec(started_at: datetime, outcomes: dict[str, str]) -> Exec:
    e = Exec(id=uuid.uuid4(), project="demo", name="run", environment="ci", branch="main", commit="c1",
             status="failed" if "failed" in outcomes.values() else "passed", started_at=started_at,
             finished_at=started_at + timedelta(minutes=1))
    e.results = [Row(started_at, e.id, "demo", test_id, 1, status, 100, test_id, "suite")
                 for test_id, status in outcomes.items()]
    return e


async def test_overview_lists_10_top_failing_tests_by_default_as_documented(pg, redis_settings, token,
                                                                         dataset: Dataset):
    # `t_flaky` fails on the first day only and passes on the next two: 1 failure in 3 runs.
    # Twelve more tests fail once each, so that the top list is longer than its default limit.
    await dataset.write([
        _exec(DAY0 + timedelta(hours=1), {"t_flaky": "failed", "t_solid": "passed"}),
        _exec(DAY0 + timedelta(days=1, hours=1), {"t_flaky": "passed", "t_solid": "passed"}),
        _exec(DAY0 + timedelta(days=2, hours=1), {"t_flaky": "passed"}),
        _exec(DAY0 + timedelta(days=2, hours=2), {f"t_f{i:02}": "failed" for i in range(12)}),
    ])
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    params = {"project": "demo", "from": iso(DAY0), "to": iso(DAY0 + timedelta(days=3))}
    async with query_client(settings) as client:
        overview = await client.get("/v1/dashboard/overview", params=params, headers=auth)
        assert overview.status == 200, await overview.text()
        top = (await overview.json())["top_failing_tests"]
        failing = await client.get("/v1/tests/failing", params=params, headers=auth)
        items = (await failing.json())["items"]

    assert len(items) == 13  # tests/failing's own default (20) is larger than the list
    assert len(top) == 10  # the overview's documented default
    assert top == items[:10]
    flaky = next(i for i in items if i["test_id"] == "t_flaky")
    assert (flaky["failures"], flaky["runs"], flaky["failure_rate"]) == (1, 3, round(1 / 3, 6))
    # Ties on failures are ordered by test id: `t_flaky` sorts after the `t_f..` ones.
    assert [t["test_id"] for t in top] == [f"t_f{i:02}" for i in range(10)]
    assert all((t["failures"], t["runs"], t["failure_rate"]) == (1, 1, 1.0) for t in top)


async def test_overview_lists_the_flaky_test_with_its_runs_over_the_whole_range(pg, redis_settings, token,
                                                                            dataset: Dataset):
    await dataset.write([
        _exec(DAY0 + timedelta(hours=1), {"t_flaky": "failed"}),
        _exec(DAY0 + timedelta(days=1, hours=1), {"t_flaky": "passed"}),
        _exec(DAY0 + timedelta(days=2, hours=1), {"t_flaky": "passed"}),
        _exec(DAY0 + timedelta(days=2, hours=2), {"t_flaky": "passed"}),
    ])
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    params = {"project": "demo", "from": iso(DAY0), "to": iso(DAY0 + timedelta(days=3))}
    async with query_client(settings) as client:
        top = (await (await client.get("/v1/dashboard/overview", params=params, headers=auth)).json())[
            "top_failing_tests"]
        items = (await (await client.get("/v1/tests/failing", params=params, headers=auth)).json())["items"]
    # Runs count the days without failures too, as /v1/tests/failing does.
    assert [(t["test_id"], t["failures"], t["runs"], t["failure_rate"]) for t in top] == [
        ("t_flaky", 1, 4, 0.25)]
    assert top == items


def _clock(at: datetime):
    return lambda: at


async def test_history_pages_without_a_range_keep_the_range_of_the_first_page(pg, redis_settings, token,
                                                                              dataset: Dataset, monkeypatch):
    now = datetime.now(timezone.utc)
    window_start = now.replace(second=0, microsecond=0) + timedelta(minutes=1) - timedelta(days=7)
    # The oldest attempt sits just inside the default 7-day range; the others are recent.
    execs = [_exec(window_start + timedelta(seconds=90), {"t_hist": "failed"})]
    execs += [_exec(now - timedelta(hours=i + 1), {"t_hist": "passed"}) for i in range(4)]
    await dataset.write(execs)
    expected = sorted(((e.started_at, str(e.id)) for e in execs), reverse=True)
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    got = []
    async with query_client(settings) as client:
        resp = await client.get("/v1/tests/t_hist/history", params={"project": "demo", "limit": "2"}, headers=auth)
        while True:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            got.extend((datetime.fromisoformat(i["execution_started_at"]), i["execution_id"]) for i in body["items"])
            if body["next_cursor"] is None:
                break
            # The user reads on for a while: "now" moves on by an hour before the next page.
            monkeypatch.setattr(routes, "_now", _clock(routes._now() + timedelta(hours=1)))
            link = resp.headers["Link"]
            resp = await client.get(link[link.index("<") + 1:link.index(">")], headers=auth)
    assert got == expected
