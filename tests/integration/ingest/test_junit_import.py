"""``POST /v1/junit`` end to end on a real PostgreSQL: a report becomes one finished execution."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import msgspec
import pytest

from .conftest import FAST

pytestmark = pytest.mark.pg

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "junit"
XML = {"Content-Type": "application/xml"}
NO_RELAY = msgspec.structs.replace(FAST, relay_enabled=False)


async def _post(client, name_or_bytes, headers, **params):
    body = name_or_bytes if isinstance(name_or_bytes, bytes) else (FIXTURES / name_or_bytes).read_bytes()
    params.setdefault("project", "demo")
    return await client.post("/v1/junit", data=body, params=params, headers={**XML, **headers})


@pytest.mark.parametrize("fixture,total,failed", [
    ("pytest.xml", 9, 2), ("surefire.xml", 13, 4), ("jest.xml", 8, 2), ("playwright.xml", 4, 1)])
async def test_a_report_becomes_one_finished_execution(ingest, auth, pg, fixture, total, failed):
    client = await ingest(config=NO_RELAY)
    resp = await _post(client, fixture, auth(), branch="main", build_url="https://ci.example/42")
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    execution = body["execution"]
    assert body["created"] is True and body["accepted"] == total and body["duplicates"] == 0
    assert execution["counts"]["total"] == total and execution["counts"]["failed"] == failed
    assert execution["status"] in ("failed", "error") and execution["finished_at"] is not None
    assert execution["branch"] == "main" and execution["attributes"]["source"] == "junit"
    conn = await asyncpg.connect(pg)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM results WHERE execution_id = $1", execution["id"])
        types = [r["t"] for r in await conn.fetch(
            "SELECT convert_from(payload, 'UTF8')::jsonb->>'type' AS t FROM outbox ORDER BY id")]
    finally:
        await conn.close()
    assert stored == total
    assert types == ["execution.started", "results.recorded", "execution.finished"]

    # the same upload again (a retried CI step) finds the first import and adds nothing
    again = await _post(client, fixture, auth(), branch="main", build_url="https://ci.example/42")
    assert again.status == 200
    repeat = await again.json()
    assert repeat["created"] is False and repeat["execution"]["id"] == execution["id"]


@pytest.mark.parametrize("fixture", ["bomb.xml", "xxe.xml"])
async def test_xml_bomb_and_external_entities_are_refused(ingest, auth, pg, fixture):
    client = await ingest(config=NO_RELAY)
    resp = await _post(client, fixture, auth())
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["code"] == "forbidden_xml"
    assert "root:" not in err["message"]  # nothing of /etc/passwd leaked
    conn = await asyncpg.connect(pg)
    try:
        assert await conn.fetchval("SELECT count(*) FROM executions") == 0
    finally:
        await conn.close()


async def test_bad_uploads_get_4xx(ingest, auth, token):
    client = await ingest(config=msgspec.structs.replace(NO_RELAY, max_body_bytes=2048))
    h = auth()
    malformed = await _post(client, b"<testsuites>\n<testsuite>\n</testsuites>", h)
    assert malformed.status == 400 and "line 3" in (await malformed.json())["error"]["message"]
    wrong_type = await client.post("/v1/junit", data=b"<x/>", params={"project": "demo"},
                                   headers={**h, "Content-Type": "application/json"})
    assert wrong_type.status == 415
    assert (await _post(client, "surefire.xml", h)).status == 413
    assert (await _post(client, "jest.xml", h, project="other")).status == 403
    assert (await _post(client, "jest.xml", {})).status == 401
    missing = await client.post("/v1/junit", data=b"<testsuites/>", headers={**h, **XML})
    assert missing.status == 400 and "`project`" in (await missing.json())["error"]["message"]
    assert (await _post(client, b"<testsuites/>", h)).status == 422


async def test_odd_reports_and_parameters_are_4xx_or_imported_never_a_500(ingest, auth, pg):
    client = await ingest(config=NO_RELAY)
    h = auth()
    nul = await client.post("/v1/junit", data=b'<testsuite name="s"><testcase name="t"/></testsuite>',
                            params={"project": "demo", "branch": "main\x00x"}, headers={**h, **XML})
    assert nul.status == 400 and (await nul.json())["error"]["field"] == "branch"
    long_branch = await client.post("/v1/junit", data=b'<testsuite name="s"><testcase name="t"/></testsuite>',
                                    params={"project": "demo", "branch": "枝" * 200}, headers={**h, **XML})
    assert long_branch.status == 422 and (await long_branch.json())["error"]["field"] == "branch"
    # A 1 MB report name, a timestamp in year 9999 and absurd times: imported, clipped and ignored.
    odd = (b'<testsuites name="' + b"n" * 1_000_000 + b'"><testsuite name="s" timestamp="9999-12-31T23:59:59" '
           b'time="1999999"><testcase classname="c" name="t" time="1"/></testsuite></testsuites>')
    resp = await client.post("/v1/junit", data=odd, params={"project": "demo"}, headers={**h, **XML})
    assert resp.status == 201, await resp.text()
    execution = (await resp.json())["execution"]
    assert len(execution["name"]) == 1024 and execution["status"] == "passed"
