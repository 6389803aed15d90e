"""What a client relies on (issue #21), through ingest and query on one app as `atas dev` runs them:
one expiry rule, conflicts said out loud, bounded attributes that come back, unknown and malformed
parameters refused, foreign executions answered like missing ones, messages in words."""

from __future__ import annotations

import base64
import io
import time
import uuid

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.auth import LEEWAY_S
from atas.common.bus import MemoryBus
from atas.common.engines import install_engines
from atas.ingest.app import setup as setup_ingest
from atas.ingest.config import IngestConfig
from atas.query.app import setup as setup_query
from atas.query.config import QueryConfig
from tests.conftest import make_settings

pytestmark = pytest.mark.pg


@pytest.fixture
async def api(pg):
    settings = make_settings(db_dsn=pg, mode="dev")
    app = create_app(settings, "dev")
    install_engines(app, application_name="atas-contract-test", bus=MemoryBus())
    setup_ingest(app, IngestConfig(relay_poll_s=0.2, relay_backoff_max_s=1.0))
    setup_query(app, QueryConfig())
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
def h(token):
    return {"Authorization": f"Bearer {token()}"}


async def _start(api, h, **body) -> str:
    body = {"id": str(uuid.uuid4()), "project": "demo", "name": "run", **body}
    resp = await api.post("/v1/executions", json=body, headers=h)
    assert resp.status == 201, await resp.text()
    return body["id"]


async def _error(resp, status: int) -> dict:
    text = await resp.text()
    assert resp.status == status, text
    return msgspec.json.decode(text)["error"]


async def test_one_expiry_rule_with_a_few_seconds_of_skew_on_every_endpoint(api, token):
    assert LEEWAY_S <= 5
    now = time.time()
    # expired 2 s ago: inside the skew allowance, accepted by ingest and query alike
    fresh = {"Authorization": f"Bearer {token(ttl=1, now=now - 3)}"}
    assert (await api.post("/v1/executions", json={"project": "demo", "name": "x"}, headers=fresh)).status == 201
    assert (await api.get("/v1/executions?project=demo", headers=fresh)).status == 200
    # expired 12 s ago (the case): refused by both
    stale = {"Authorization": f"Bearer {token(ttl=1, now=now - 13)}"}
    for resp in (await api.post("/v1/executions", json={"project": "demo", "name": "x"}, headers=stale),
                 await api.get("/v1/executions?project=demo", headers=stale)):
        assert "expired" in (await _error(resp, 401))["message"]


async def test_query_memo_of_verified_tokens_honours_the_same_deadline(api, token):
    header = {"Authorization": f"Bearer {token(ttl=1)}"}
    assert (await api.get("/v1/executions?project=demo", headers=header)).status == 200
    time.sleep(1 + LEEWAY_S + 0.2)  # noqa: ASYNC251 - the server must see the clock move
    await _error(await api.get("/v1/executions?project=demo", headers=header), 401)


async def test_a_result_resent_with_another_body_is_a_409_naming_it_and_nothing_is_stored(api, h):
    ex = await _start(api, h)
    url = f"/v1/executions/{ex}/results"
    first = [{"test_id": "t1", "name": "t1", "status": "failed"}, {"test_id": "t2", "name": "t2", "status": "passed"}]
    assert (await api.post(url, json={"results": first}, headers=h)).status == 200
    # identical body again: a retry, counted as duplicates
    again = await api.post(url, json={"results": first}, headers=h)
    assert again.status == 200 and (await again.json())["duplicates"] == 2
    # t1 again as passed (a rerun harness that forgot `attempt`), with a new test t3 in the batch
    rerun = [{"test_id": "t3", "name": "t3", "status": "passed"}, {"test_id": "t1", "name": "t1", "status": "passed"}]
    error = await _error(await api.post(url, json={"results": rerun}, headers=h), 409)
    assert error["code"] == "result_conflict" and error["field"] == "results[1]"
    assert error["details"]["conflicts"] == [{"index": 1, "test_id": "t1", "attempt": 1, "fields": ["status"]}]
    assert "'t1' attempt 1 (status)" in error["message"] and "attempt" in error["message"]
    page = await (await api.get(f"/v1/executions/{ex}/results?project=demo", headers=h)).json()
    assert [(r["test_id"], r["status"]) for r in page["items"]] == [("t1", "failed"), ("t2", "passed")]
    # the same key twice in one batch with different bodies is refused as well
    twice = [{"test_id": "t4", "name": "t4", "status": "failed"}, {"test_id": "t4", "name": "t4", "status": "passed"}]
    assert (await _error(await api.post(url, json={"results": twice}, headers=h), 409))["field"] == "results[1]"
    # the next attempt is how a rerun is reported
    ok = await api.post(url, json={"results": [{"test_id": "t1", "name": "t1", "status": "passed", "attempt": 2}]},
                        headers=h)
    assert ok.status == 200 and (await ok.json())["accepted"] == 1


async def test_attributes_are_bounded_and_returned(api, h):
    # the issue's 5 MB string: refused by the attributes' bound (the body limit is larger)
    huge = io.BytesIO(msgspec.json.encode({"project": "demo", "name": "x", "attributes": {"blob": "x" * 5_000_000}}))
    error = await _error(await api.post("/v1/executions", data=huge,
                                        headers={**h, "Content-Type": "application/json"}), 422)
    assert error["field"] == "attributes"
    error = await _error(await api.post("/v1/executions", json={"project": "demo", "name": "x",
                                                                "attributes": {"blob": "x" * 20_000}},
                                        headers=h), 422)
    assert error["field"] == "attributes" and "16384" in error["message"]
    error = await _error(await api.post("/v1/executions", json={"project": "demo", "name": "x",
                                                                "attributes": {f"k{i}": i for i in range(65)}},
                                        headers=h), 422)
    assert error["field"] == "attributes" and "at most 64 keys" in error["message"]
    ex = await _start(api, h, attributes={"ci": "github"})
    url = f"/v1/executions/{ex}/results"
    big = [{"test_id": "t", "name": "t", "status": "passed", "attributes": {"x": "y" * 5000}}]
    assert (await _error(await api.post(url, json={"results": big}, headers=h), 422))["field"] == "results[0].attributes"
    sent = [{"test_id": "t", "name": "t", "status": "passed", "duration_ms": 12.6, "attributes": {"worker": "gw1"}}]
    assert (await api.post(url, json={"results": sent}, headers=h)).status == 200
    page = await (await api.get(f"/v1/executions/{ex}/results", headers=h)).json()
    assert page["items"][0]["attributes"] == {"worker": "gw1"}
    assert page["items"][0]["duration_ms"] == 13  # a float duration is accepted and rounded
    listed = await (await api.get("/v1/executions?project=demo", headers=h)).json()
    assert listed["items"][0]["attributes"] == {"ci": "github"}


async def test_an_execution_is_read_by_id_alone_and_a_foreign_one_answers_like_a_missing_one(api, h, token):
    ex = await _start(api, h)
    got = await api.get(f"/v1/executions/{ex}", headers=h)
    assert got.status == 200 and (await got.json())["id"] == ex
    assert (await api.get(f"/v1/executions/{ex}/results", headers=h)).status == 200
    other = {"Authorization": f"Bearer {token(projects=['other'])}"}
    missing = str(uuid.uuid4())
    for path in ("", "/results"):
        foreign = await _error(await api.get(f"/v1/executions/{ex}{path}", headers=other), 404)
        absent = await _error(await api.get(f"/v1/executions/{missing}{path}", headers=other), 404)
        assert foreign == {**absent, "message": absent["message"].replace(missing, ex)}
        named = await _error(await api.get(f"/v1/executions/{ex}{path}?project=other", headers=other), 404)
        assert named["code"] == "not_found"


async def test_unknown_and_malformed_parameters_are_400_naming_them_everywhere(api, h):
    cases = [
        ("get", "/v1/executions?project=demo&stauts=passed", "stauts", "accepted: project"),
        ("get", "/v1/dashboard/overview?project=demo&limt=3", "limt", "accepted:"),
        ("get", f"/v1/executions/{uuid.uuid4()}?projekt=demo", "projekt", "accepted: project"),
        ("post", "/v1/junit?project=demo&nmae=x", "nmae", "accepted: project"),
        ("post", "/v1/executions?project=demo", "project", "takes no query parameters"),
        ("post", f"/v1/executions/{uuid.uuid4()}/finish?status=passed", "status", "takes no query parameters"),
        ("get", "/v1/executions?project=demo&status=passed&status=failed", "status", "send it once"),
        ("get", "/v1/executions?project=demo&limit=ten", "limit", "an integer"),
        ("get", "/v1/executions?project=bad%20key", "project", "letters, digits"),
        ("get", "/v1/trends?project=demo&environment=a%0Ab", "environment", "control characters"),
        ("get", "/v1/trends?project=demo&from=2026-01-01T00:00:00%2002:00", "from", "%2B"),
    ]
    for method, path, field, words in cases:
        resp = await getattr(api, method)(path, headers=h, data=b"<x/>" if method == "post" else None)
        error = await _error(resp, 400)
        assert error["field"] == field and words in error["message"], (path, error)
        assert "regex" not in error["message"] and "Expected" not in error["message"], error


async def test_a_hand_made_cursor_outside_the_accepted_dates_is_refused(api, h):
    raw = msgspec.json.encode(["ex", "2300-01-01T00:00:00+00:00", str(uuid.uuid4())])
    cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    error = await _error(await api.get(f"/v1/executions?project=demo&cursor={cursor}", headers=h), 400)
    assert error["field"] == "cursor"


async def test_times_in_rfc3339_lowercase_are_accepted(api, h):
    assert (await api.get("/v1/trends?project=demo&from=2026-01-01t00:00:00z&to=2026-01-02T00:00:00z",
                          headers=h)).status == 200
    ex = await _start(api, h, started_at="2026-01-01t10:00:00z")
    got = await (await api.get(f"/v1/executions/{ex}", headers=h)).json()
    assert got["started_at"].startswith("2026-01-01T10:00:00")


async def test_body_errors_say_in_words_what_is_wrong_and_what_is_accepted(api, h):
    ex = await _start(api, h)
    cases = [
        ("/v1/executions", b'{"project": "bad key", "name": "x"}', 422, "project", "letters, digits"),
        ("/v1/executions", b'{"project": "demo", "name": "x", "colour": 1}', 422, "colour", "accepted: project"),
        ("/v1/executions", b'{"project": "demo", "name": "\\ud800"}', 400, None, "surrogate"),
        ("/v1/executions", b'{"project": "demo", "name": "x", "started_at": "2026-01-01T00:00:00"}', 422,
         "started_at", "timezone"),
        (f"/v1/executions/{ex}/results", b'{"results": [{"test_id": "t", "name": "t", "status": "ok"}]}', 422,
         "results[0].status", "valid values: error, failed, passed, skipped"),
        (f"/v1/executions/{ex}/results", b'{"results": [{"test_id": "t", "name": "t", "status": "passed", '
                                         b'"attempt": "2"}]}', 422, "results[0].attempt", "an integer, got a string"),
        (f"/v1/executions/{ex}/finish", b'{"status": "green"}', 422, "status", "valid values"),
    ]
    for path, body, status, field, words in cases:
        resp = await api.post(path, data=body, headers={**h, "Content-Type": "application/json"})
        error = await _error(resp, status)
        assert error.get("field") == field and words in error["message"], (body, error)
        for jargon in ("regex", "`int", "truncated", "\\Z"):
            assert jargon not in error["message"], error
