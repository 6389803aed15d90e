"""Hostile input is a 400 that names the parameter, never a 500: dates at datetime's limits,
tampered cursors, NUL and control characters, malformed project keys; and a statement timeout is
not a 500 either."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta

import asyncpg
import msgspec
import pytest

from atas.query.routes import encode_cursor
from tests.conftest import make_settings
from tests.integration.query.conftest import Dataset, query_client
from tests.integration.query.test_aggregates import NOW, START, iso

pytestmark = [pytest.mark.pg, pytest.mark.redis]


@pytest.fixture
async def few(dataset: Dataset):
    await dataset.write(dataset.make("demo", START, count=6, span=timedelta(days=6), tests=4))
    return dataset


async def _expect_400(client, auth, cases) -> None:
    for path, params, field in cases:
        resp = await client.get(path, params=params, headers=auth)
        text = await resp.text()
        assert resp.status == 400, (path, params, resp.status, text)
        error = (await resp.json())["error"]
        assert error["field"] == field, (path, params, error)


async def test_dates_beyond_the_supported_years_are_400_naming_the_parameter(pg, redis_settings, token, few):
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token(projects=['*'])}"}
    cases = [
        # no `from`: subtracting the default range from year 1 overflowed
        ("/v1/trends", {"project": "demo", "to": "0001-01-02"}, "to"),
        ("/v1/executions", {"project": "demo", "to": "0001-01-02"}, "to"),
        # converting to UTC lands in year 0
        ("/v1/trends", {"project": "demo", "from": "0001-01-01T00:00:00+01:00", "to": "0001-01-05"}, "to"),
        ("/v1/trends", {"project": "demo", "from": "0001-01-01T00:00:00+01:00", "to": "2026-01-05"}, "from"),
        ("/v1/executions", {"project": "demo", "to": "0001-01-01T00:00-00:01"}, "to"),
        ("/v1/dashboard/overview", {"project": "demo", "from": "9999-12-31T23:00:00-05:00"}, "from"),
        # widening to whole days added a day to 9999-12-31
        ("/v1/tests/failing", {"project": "demo", "from": "9999-12-30", "to": "9999-12-31T12:00"}, "to"),
        ("/v1/tests/flaky", {"project": "demo", "from": "2199-12-30", "to": "2200-01-01T00:00:01Z"}, "to"),
        ("/v1/tests/x/history", {"project": "demo", "from": "1969-12-31T23:59:59Z", "to": "1970-01-02"}, "from"),
        # `to` at the first instant supported and no `from`: the range would be empty
        ("/v1/trends", {"project": "demo", "to": "1970-01-01T00:00:00Z"}, "to"),
    ]
    async with query_client(settings) as client:
        await _expect_400(client, auth, cases)
        # The edges themselves are fine (and give empty answers).
        for path, params in (("/v1/trends", {"project": "demo", "to": "1970-01-03"}),
                             ("/v1/tests/failing", {"project": "demo", "from": "2199-12-30", "to": "2200-01-01"})):
            resp = await client.get(path, params=params, headers=auth)
            assert resp.status == 200, (path, params, await resp.text())


async def test_tampered_cursors_are_400_naming_the_cursor(pg, redis_settings, token, few):
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    auth = {"Authorization": f"Bearer {token()}"}
    execution = few.executions[0]
    u = str(uuid.uuid4())
    now = NOW.isoformat()
    results = f"/v1/executions/{execution.id}/results"
    history = "/v1/tests/x/history"
    rng = (iso(START), iso(NOW))
    cases = [
        # a datetime that does not exist in UTC
        ("/v1/executions", encode_cursor("ex", "0001-01-01T00:00:00+14:00", u)),
        ("/v1/executions", encode_cursor("ex", "9999-12-31T23:00:00-05:00", u)),
        (history, encode_cursor("th", "0001-01-01T00:00:00+14:00", u, 1, *rng)),
        # attempts beyond an `integer` column, or below 1
        (results, encode_cursor("rs", "a", 2**40)),
        (results, encode_cursor("rs", "a", 0)),
        (history, encode_cursor("th", now, u, 2**40, *rng)),
        # a test id PostgreSQL cannot hold
        (results, encode_cursor("rs", "a\u0000b", 1)),
        (results, base64.urlsafe_b64encode(b'["rs","\\ud800",1]').decode()),
        # the range a history cursor carries: outside the supported years, reversed, too wide, missing
        (history, encode_cursor("th", now, u, 1, "0001-01-01T00:00:00+00:00", "0001-01-05T00:00:00+00:00")),
        (history, encode_cursor("th", now, u, 1, iso(NOW), iso(START))),
        (history, encode_cursor("th", now, u, 1, "2000-01-01T00:00:00Z", iso(NOW))),
        (history, encode_cursor("th", now, u, 1)),
    ]
    async with query_client(settings) as client:
        await _expect_400(client, auth, [(path, {"project": "demo", "cursor": cursor}, "cursor")
                                         for path, cursor in cases])


async def test_nul_and_control_characters_are_400_naming_the_parameter(pg, redis_settings, token, few):
    settings = make_settings(db_dsn=pg, redis=redis_settings)
    # A token for every project, so that a bad project key reaches the database if not refused first.
    auth = {"Authorization": f"Bearer {token(projects=['*'])}"}
    execution = few.executions[0]
    cases = [
        ("/v1/executions", {"project": "demo", "environment": "\x00x"}, "environment"),
        ("/v1/executions", {"project": "demo", "branch": "\x00"}, "branch"),
        ("/v1/executions", {"project": "demo", "branch": "main\x01"}, "branch"),
        ("/v1/dashboard/overview", {"project": "demo", "branch": "\x00"}, "branch"),
        ("/v1/trends", {"project": "demo", "environment": "ci\x00"}, "environment"),
        ("/v1/tests/failing", {"project": "demo", "environment": "\x00"}, "environment"),
        ("/v1/tests/flaky", {"project": "demo", "branch": "a\nb"}, "branch"),
        ("/v1/tests/x/history", {"project": "demo", "environment": "\x00"}, "environment"),
        ("/v1/tests/a%00b/history", {"project": "demo"}, "test_id"),
        ("/v1/executions", {"project": "de\x00mo"}, "project"),
        ("/v1/executions", {"project": "demo\n"}, "project"),  # Python's `$` would let this one through
        ("/v1/dashboard/overview", {"project": "acme:fence"}, "project"),
        ("/v1/trends", {"project": ""}, "project"),
        ("/v1/tests/slowest", {"project": "x" * 129}, "project"),
        (f"/v1/executions/{execution.id}", {"project": "demo\x00"}, "project"),
        (f"/v1/executions/{execution.id}/results", {"project": "-demo"}, "project"),
    ]
    async with query_client(settings) as client:
        await _expect_400(client, auth, cases)
        # Test ids may hold other control characters (ingest stores them): not an error.
        resp = await client.get("/v1/tests/a%01b/history", params={"project": "demo"}, headers=auth)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["test_id"] == "a\x01b"


async def test_a_statement_timeout_during_an_aggregation_is_not_a_500(pg, redis_settings, token, few):
    from atas.common.config import DatabaseSettings

    settings = msgspec.structs.replace(make_settings(db_dsn=pg, redis=redis_settings),
                                       db=DatabaseSettings(dsn=pg, pool_min=0, pool_max=4, statement_timeout_ms=300))
    auth = {"Authorization": f"Bearer {token()}"}
    params = {"project": "demo", "from": iso(START), "to": iso(NOW)}
    locker = await asyncpg.connect(pg)
    try:
        async with query_client(settings) as client:
            # The aggregation waits on a lock until the statement timeout cancels it (SQLSTATE 57014).
            async with locker.transaction():
                await locker.execute("LOCK TABLE executions IN ACCESS EXCLUSIVE MODE")
                resp = await client.get("/v1/trends", params=params, headers=auth)
                error = (await resp.json())["error"]
            assert resp.status == 504 and error["code"] == "statement_timeout", (resp.status, error)
            assert "Retry-After" not in resp.headers  # retrying the same request costs the same
            # Nothing was cached: the next read aggregates and answers.
            resp = await client.get("/v1/trends", params=params, headers=auth)
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Cache"] == "miss"
    finally:
        await locker.close()
