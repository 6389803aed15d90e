"""The write path against a real PostgreSQL: idempotency, exact counters, outbox events, errors."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import msgspec
import pytest

from atas.common.bus import MemoryBus
from atas.common.events import decode_event
from atas.ingest.config import IngestConfig

from .conftest import FAST, relay_of, results, start, wait_until

pytestmark = pytest.mark.pg


async def _outbox_events(dsn: str):
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT payload FROM outbox ORDER BY id")
    finally:
        await conn.close()
    return [decode_event(r["payload"]) for r in rows]


async def _fetch(dsn: str, sql: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def _no_relay() -> IngestConfig:
    return msgspec.structs.replace(FAST, relay_enabled=False)


async def test_start_is_idempotent_and_a_conflicting_body_is_409(ingest, auth, pg):
    client = await ingest(config=_no_relay())
    h = auth()
    eid = str(uuid.uuid4())
    body = {"id": eid, "project": "demo", "name": "nightly", "branch": "main", "commit": "abc",
            "attributes": {"ci": "gha", "shard": 1}}
    first = await client.post("/v1/executions", json=body, headers=h)
    assert first.status == 201
    created = await first.json()
    assert created["status"] == "running" and created["counts"]["total"] == 0
    again = await client.post("/v1/executions", json=body, headers=h)
    assert again.status == 200 and await again.json() == created
    other = await client.post("/v1/executions", json={**body, "branch": "dev"}, headers=h)
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "conflict"
    # the project row was created on first use; exactly one started event
    assert [r["key"] for r in await _fetch(pg, "SELECT key FROM projects")] == ["demo"]
    events = await _outbox_events(pg)
    assert [(e.type, e.seq, e.execution_id) for e in events] == [("execution.started", 1, eid)]


async def test_a_retried_batch_is_stored_once(ingest, auth, pg):
    client = await ingest(config=_no_relay())
    h = auth()
    ex = await start(client, h)
    batch = {"results": results(50, status_of=lambda i: "failed" if i % 10 == 0 else "passed")}
    first = await client.post(f"/v1/executions/{ex['id']}/results", json=batch, headers=h)
    assert first.status == 200
    assert (await first.json())["accepted"] == 50
    retry = await client.post(f"/v1/executions/{ex['id']}/results", json=batch, headers=h)
    body = await retry.json()
    assert (body["accepted"], body["duplicates"]) == (0, 50)
    assert body["counts"] == {"total": 50, "passed": 45, "failed": 5, "skipped": 0, "error": 0}
    rows = await _fetch(pg, "SELECT count(*) AS n FROM results WHERE execution_id = $1", uuid.UUID(ex["id"]))
    assert rows[0]["n"] == 50
    # a retry that adds nothing adds no event either
    assert [e.type for e in await _outbox_events(pg)] == ["execution.started", "results.recorded"]
    # client-supplied ids: the same id again is a duplicate even under another attempt number
    rid = str(uuid.uuid4())
    one = {"results": [{"id": rid, "test_id": "x", "name": "x", "status": "passed"}]}
    assert (await (await client.post(f"/v1/executions/{ex['id']}/results", json=one, headers=h)).json())["accepted"] == 1
    one["results"][0]["attempt"] = 2
    again = await (await client.post(f"/v1/executions/{ex['id']}/results", json=one, headers=h)).json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)


async def test_retries_of_a_test_keep_every_attempt(ingest, auth, pg):
    client = await ingest(config=_no_relay())
    h = auth()
    ex = await start(client, h)
    batch = [{"test_id": "flaky", "name": "flaky", "status": "failed", "attempt": 1},
             {"test_id": "flaky", "name": "flaky", "status": "passed", "attempt": 2},
             {"test_id": "flaky", "name": "flaky", "status": "passed", "attempt": 2}]  # in-batch duplicate
    body = await (await client.post(f"/v1/executions/{ex['id']}/results", json={"results": batch}, headers=h)).json()
    assert (body["accepted"], body["duplicates"]) == (2, 1)
    rows = await _fetch(pg, "SELECT attempt, status FROM results WHERE test_id = 'flaky' ORDER BY attempt")
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "failed"), (2, "passed")]


async def test_concurrent_batches_keep_counters_exact(ingest, auth, pg):
    client = await ingest(config=_no_relay())
    h = auth()
    ex = await start(client, h)
    statuses = ("passed", "failed", "skipped", "error")

    async def send(k: int):
        # 30 batches of 40; every batch overlaps the previous one by 10 results (a retry storm: the
        # overlapping results are the same results sent again, identical)
        batch = results(40, prefix=f"t{k * 30}-", status_of=lambda i: statuses[(i + k * 30) % 4])
        for r, i in zip(batch, range(40)):
            r["test_id"] = f"t{k * 30 + i}"
            r["name"] = f"test {k * 30 + i}"
            if "error_message" in r:
                r["error_message"] = f"boom {k * 30 + i}"
        resp = await client.post(f"/v1/executions/{ex['id']}/results", json={"results": batch}, headers=h)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    answers = await asyncio.gather(*(send(k) for k in range(30)))
    stored = await _fetch(pg, "SELECT status, count(*) AS n FROM results WHERE execution_id = $1 GROUP BY status",
                          uuid.UUID(ex["id"]))
    by_status = {r["status"]: r["n"] for r in stored}
    total = sum(by_status.values())
    assert total == 29 * 30 + 40  # distinct test ids
    assert sum(a["accepted"] for a in answers) == total
    assert sum(a["duplicates"] for a in answers) == 30 * 40 - total
    row = (await _fetch(pg, "SELECT total, passed, failed, skipped, errored, last_seq FROM executions"))[0]
    assert (row["total"], row["passed"], row["failed"], row["skipped"], row["errored"]) == (
        total, by_status.get("passed", 0), by_status.get("failed", 0), by_status.get("skipped", 0),
        by_status.get("error", 0))
    # one results.recorded per batch that stored something, seq without gaps
    events = await _outbox_events(pg)
    recorded = [e for e in events if e.type == "results.recorded"]
    assert sum(e.data["accepted"] for e in recorded) == total
    assert sorted(e.seq for e in events) == list(range(1, row["last_seq"] + 1))
    assert max(e.data["totals"]["total"] for e in recorded) == total


async def test_finish_derives_status_is_idempotent_and_late_results_still_count(ingest, auth, pg):
    client = await ingest(config=_no_relay())
    h = auth()
    ex = await start(client, h)
    url = f"/v1/executions/{ex['id']}"
    await client.post(url + "/results", json={"results": results(3, status_of=lambda i: "failed" if i == 1 else "passed")},
                      headers=h)
    fin = await client.post(url + "/finish", headers=h)  # empty body: derive
    assert fin.status == 200
    done = await fin.json()
    assert done["status"] == "failed" and done["finished_at"] is not None
    again = await client.post(url + "/finish", json={}, headers=h)
    assert again.status == 200 and (await again.json())["finished_at"] == done["finished_at"]
    conflict = await client.post(url + "/finish", json={"status": "passed"}, headers=h)
    assert conflict.status == 409
    late = await client.post(url + "/results", json={"results": results(2, prefix="late")}, headers=h)
    assert (await late.json())["counts"]["total"] == 5
    types = [e.type for e in await _outbox_events(pg)]
    assert types == ["execution.started", "results.recorded", "execution.finished", "results.recorded"]
    finished = [e for e in await _outbox_events(pg) if e.type == "execution.finished"][0]
    assert finished.data["status"] == "failed" and finished.data["totals"]["failed"] == 1


async def test_client_errors_are_4xx_and_write_nothing(ingest, auth, token, pg):
    client = await ingest(config=msgspec.structs.replace(_no_relay(), max_batch=5, max_body_bytes=4096))
    h = auth()
    ex = await start(client, h)
    url = f"/v1/executions/{ex['id']}/results"
    ok = {"results": results(2)}

    async def status(resp):
        return resp.status, (await resp.json())["error"]

    assert (await status(await client.post(url, json=ok)))[0] == 401
    assert (await status(await client.post(url, json=ok, headers={"Authorization": "Bearer nope"})))[0] == 401
    assert (await status(await client.post(url, json=ok, headers=auth(scopes=("query:read",)))))[0] == 403
    assert (await status(await client.post(url, json=ok, headers=auth(projects=("other",)))))[0] == 403
    assert (await status(await client.post(f"/v1/executions/{uuid.uuid4()}/results", json=ok, headers=h)))[0] == 404
    assert (await status(await client.post("/v1/executions/nope/results", json=ok, headers=h)))[0] == 400
    assert (await status(await client.post(url, data=b"x", headers={**h, "Content-Type": "text/plain"})))[0] == 415
    assert (await status(await client.post(url, data=b'{"results": [', headers={**h, "Content-Type": "application/json"})))[0] == 400
    code, err = await status(await client.post(url, json={"results": results(6)}, headers=h))
    assert code == 413 and err["code"] == "batch_too_large"
    code, err = await status(await client.post(url, json={"results": [{**results(1)[0], "error_trace": "x" * 5000}]}, headers=h))
    assert code == 413 and err["code"] == "payload_too_large"
    bad = results(3)
    bad[2]["status"] = "exploded"
    code, err = await status(await client.post(url, json={"results": bad}, headers=h))
    assert code == 422 and err["field"] == "results[2].status"
    bad = results(2)
    bad[1]["colour"] = "red"
    code, err = await status(await client.post(url, json={"results": bad}, headers=h))
    assert code == 422 and "colour" in err["message"]
    bad = results(2)
    bad[1]["name"] = "nul\x00inside"
    code, err = await status(await client.post(url, json={"results": bad}, headers=h))
    assert code == 422 and err["field"] == "results[1].name"
    bad = results(1)
    bad[0]["started_at"] = "2024-01-01T00:00:00"  # no timezone
    code, err = await status(await client.post(url, json={"results": bad}, headers=h))
    assert code == 422 and err["field"] == "results[0].started_at"
    future = (datetime.now(timezone.utc) + timedelta(days=3)).isoformat()
    code, err = await status(await client.post("/v1/executions", json={"project": "demo", "name": "n",
                                                                     "started_at": future}, headers=h))
    assert code == 422 and err["field"] == "started_at"
    code, err = await status(await client.post("/v1/executions", json={"project": "bad key!", "name": "n"}, headers=h))
    assert code == 422 and err["field"] == "project"
    code, err = await status(await client.post("/v1/executions", json={"project": "demo\n", "name": "n"}, headers=h))
    assert code == 422 and err["field"] == "project"  # the database's rule, newline included
    # Index keys are bounded in bytes: 400 CJK characters are 1,200 bytes (PostgreSQL refuses
    # index entries over ~2.7 KB, and the per-test rollups key on test id, branch and environment).
    for char in ("\n", "\t", "\x1b", "\x7f", "\x85"):  # a line break, a tab, ESC, DEL, a C1 control
        bad = results(3)
        bad[2]["test_id"] = f"tests/test_a.py::test{char}x"
        code, err = await status(await client.post(url, json={"results": bad}, headers=h))
        assert code == 422 and err["field"] == "results[2].test_id", (repr(char), err)
        assert f"U+{ord(char):04X}" in err["message"]
    bad = results(1)
    bad[0]["test_id"] = "測" * 400
    code, err = await status(await client.post(url, json={"results": bad}, headers=h))
    assert code == 422 and err["field"] == "results[0].test_id" and "bytes" in err["message"]
    code, err = await status(await client.post("/v1/executions", json={"project": "demo", "name": "n",
                                                                     "branch": "枝" * 200}, headers=h))
    assert code == 422 and err["field"] == "branch"
    bad = results(1)
    bad[0]["started_at"] = "9999-12-31T23:00:00-05:00"  # year 10000 in UTC
    code, err = await status(await client.post(url, json={"results": bad}, headers=h))
    assert code == 422 and err["field"] == "results[0].started_at"
    # none of the refused requests wrote anything
    assert (await _fetch(pg, "SELECT count(*) AS n FROM results"))[0]["n"] == 0
    assert (await _fetch(pg, "SELECT count(*) AS n FROM executions"))[0]["n"] == 1


async def test_results_are_stored_with_every_field(ingest, auth, pg):
    client = await ingest(config=_no_relay())
    h = auth()
    ex = await start(client, h, started_at="2026-01-15T10:00:00+00:00")
    r = {"id": str(uuid.uuid4()), "test_id": "tests/test_a.py::test_b[1]", "name": "test_b[1]", "status": "error",
         "attempt": 3, "suite": "tests.test_a", "file": "tests/test_a.py", "started_at": "2026-01-15T10:00:01Z",
         "duration_ms": 1234, "error_type": "ValueError", "error_message": "bad", "error_trace": "Traceback…",
         "attachments": [{"uri": "s3://bucket/shot.png", "kind": "screenshot", "content_type": "image/png"}],
         "attributes": {"browser": "chromium", "retries": [1, 2]}}
    resp = await client.post(f"/v1/executions/{ex['id']}/results", json={"results": [r]}, headers=h)
    assert resp.status == 200
    row = (await _fetch(pg, "SELECT * FROM results"))[0]
    assert str(row["id"]) == r["id"] and row["attempt"] == 3 and row["duration_ms"] == 1234
    assert row["execution_started_at"] == datetime(2026, 1, 15, 10, tzinfo=timezone.utc)
    assert row["error_trace"] == "Traceback…" and row["file"] == "tests/test_a.py"
    assert msgspec.json.decode(row["attachments"]) == r["attachments"]
    assert msgspec.json.decode(row["attributes"]) == r["attributes"]


async def test_relay_delivers_through_the_in_process_bus(ingest, auth, pg):
    bus = MemoryBus()
    sub = bus.subscription("test", from_beginning=True)
    await sub.start()
    client = await ingest(bus=bus)
    h = auth()
    ex = await start(client, h)
    await client.post(f"/v1/executions/{ex['id']}/results", json={"results": results(5)}, headers=h)
    await client.post(f"/v1/executions/{ex['id']}/finish", json={"status": "passed"}, headers=h)
    got = []

    async def three():
        got.extend(await sub.poll(0.5))
        return len(got) >= 3

    await wait_until(three)
    events = [decode_event(m.value) for m in got]
    assert [e.type for e in events] == ["execution.started", "results.recorded", "execution.finished"]
    assert all(m.key == ex["id"].encode() for m in got)
    assert await wait_until(lambda: _outbox_empty(pg))
    assert relay_of(client).published == 3
    await sub.stop()


async def _outbox_empty(dsn):
    return (await _fetch(dsn, "SELECT count(*) AS n FROM outbox"))[0]["n"] == 0


async def test_openapi_documents_the_ingest_routes(ingest):
    client = await ingest(config=_no_relay())
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    for path in ("/v1/executions", "/v1/executions/{id}/results", "/v1/executions/{id}/finish", "/v1/junit"):
        assert "post" in doc["paths"][path]
    result = doc["components"]["schemas"]["ResultIn"]
    assert set(result["properties"]["status"]["enum"]) == {"passed", "failed", "skipped", "error"}
    assert "test_id" in result["required"]
    # every route the app serves under /v1 is documented, and every $ref resolves
    served = {(r.resource.canonical, r.method.lower()) for r in client.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/v1/")}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs and all(ref.split("/")[-1] in doc["components"]["schemas"] for ref in refs)
    junit_params = {p["name"] for p in doc["paths"]["/v1/junit"]["post"]["parameters"]}
    assert {"project", "name", "branch", "execution_id"} <= junit_params


async def test_special_characters_are_stored_exactly(ingest, auth, pg):
    client = await ingest(config=_no_relay())
    h = auth()
    ex = await start(client, h)
    nasty = "tab\there\nnew line\r\\N back\\slash \\t ünïcødé 🚀"
    # Test ids are printable (control characters are refused): COPY escapes still matter for them.
    nasty_id = "\\N back\\slash \\t \\n ünïcødé 🚀"
    batch = [{"test_id": nasty_id, "name": nasty, "status": "failed", "suite": "\\", "error_message": nasty,
              "error_trace": nasty * 3, "attributes": {nasty: nasty, "path": "C:\\tmp\\new"}},
             {"test_id": "\\N", "name": "\\N", "status": "passed", "suite": None}]
    resp = await client.post(f"/v1/executions/{ex['id']}/results", json={"results": batch}, headers=h)
    assert resp.status == 200 and (await resp.json())["accepted"] == 2
    rows = {r["test_id"]: r for r in await _fetch(pg, "SELECT * FROM results")}
    assert rows[nasty_id]["name"] == nasty and rows[nasty_id]["error_trace"] == nasty * 3
    assert rows[nasty_id]["suite"] == "\\"
    assert msgspec.json.decode(rows[nasty_id]["attributes"]) == batch[0]["attributes"]
    assert rows["\\N"]["name"] == "\\N" and rows["\\N"]["suite"] is None and rows["\\N"]["id"] is not None


async def test_deeply_nested_attributes_are_refused_not_a_500(ingest, auth):
    client = await ingest(config=_no_relay())
    h = auth()
    ex = await start(client, h)
    url = f"/v1/executions/{ex['id']}/results"
    for depth in (900, 20_000):
        body = (b'{"results": [{"test_id": "t", "name": "n", "status": "passed", "attributes": {"a": '
                + b"[" * depth + b"]" * depth + b"}}]}")
        resp = await client.post(url, data=body, headers={**h, "Content-Type": "application/json"})
        assert resp.status in (200, 400, 422), await resp.text()
