"""Attachments end to end against a real S3-compatible server (S3Proxy): what a harness and a
dashboard user see. Nothing here mocks storage: uploads and downloads use SigV4 presigned URLs."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import msgspec
import pytest

from atas.common.storage import STORAGE, delete_execution_objects
from tests.integration.attachments.conftest import decode, new_execution, sha, upload

pytestmark = [pytest.mark.pg, pytest.mark.s3]

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(200 * 1024)


async def create(client, headers, execution_id, **body):
    body.setdefault("name", "login.png")
    body.setdefault("content_type", "image/png")
    return await client.post(f"/v1/executions/{execution_id}/attachments", json=body, headers=headers)


async def rows(pg) -> list:
    conn = await asyncpg.connect(pg)
    try:
        return await conn.fetch("SELECT * FROM attachments")
    finally:
        await conn.close()


async def test_round_trip_single_put(app_with, storage_settings, http, headers, pg):
    client = await app_with(storage_settings)
    h = headers()
    run = await new_execution(client, h)
    resp = await create(client, h, run, size_bytes=len(PNG), sha256=sha(PNG), kind="screenshot",
                        test_id="login::ok", attempt=1)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["upload"]["method"] == "PUT" and "X-Amz-Signature" in created["upload"]["url"]
    assert created["state"] == "pending" and created["expires_at"]
    # A retried create answers the same attachment.
    again = await create(client, h, run, size_bytes=len(PNG), sha256=sha(PNG), kind="screenshot",
                         test_id="login::ok", attempt=1)
    assert again.status == 200 and (await again.json())["id"] == created["id"]

    await upload(http, created, PNG)
    done = await client.post(created["complete"], headers=h)
    assert done.status == 200, await done.text()
    assert (await done.json())["state"] == "stored"
    assert (await client.post(created["complete"], headers=h)).status == 200  # a retried completion

    # The result links it by id; the result view lists it with its download path.
    resp = await client.post(f"/v1/executions/{run}/results", headers=h, json={"results": [
        {"test_id": "login::ok", "name": "login ok", "status": "failed", "attachments": [{"id": created["id"]}]}]})
    assert resp.status == 200, await resp.text()
    page = await (await client.get(f"/v1/executions/{run}/results?project=demo", headers=h)).json()
    [listed] = page["items"][0]["attachments"]
    assert listed == {"id": created["id"], "name": "login.png", "kind": "screenshot", "content_type": "image/png",
                      "size_bytes": len(PNG), "download": f"/v1/attachments/{created['id']}?project=demo",
                      "sha256": sha(PNG)}

    history = await (await client.get("/v1/tests/login::ok/history?project=demo", headers=h)).json()
    assert history["items"][0]["attachments"] == [listed]

    redirect = await client.get(listed["download"], headers=h, allow_redirects=False)
    assert redirect.status == 302
    async with http.get(redirect.headers["Location"]) as got:
        assert got.status == 200
        body = await got.read()
        assert got.headers["Content-Type"] == "image/png"
    assert sha(body) == sha(PNG)
    # Range requests are served by the store (video seeking).
    async with http.get(redirect.headers["Location"], headers={"Range": "bytes=0-7"}) as part:
        assert part.status == 206 and await part.read() == PNG[:8]

    # Live monitors learn of it: attachment.stored is in the outbox, after execution.started.
    conn = await asyncpg.connect(pg)
    try:
        payloads = [decode(r["payload"]) for r in await conn.fetch("SELECT payload FROM outbox ORDER BY id")]
    finally:
        await conn.close()
    stored = [p for p in payloads if p["type"] == "attachment.stored"]
    assert len(stored) == 1 and stored[0]["data"]["id"] == created["id"]
    assert stored[0]["seq"] > payloads[0]["seq"]


async def test_scriptable_types_download_as_files(app_with, storage_settings, http, headers):
    settings = msgspec.structs.replace(storage_settings, content_types=("image/*", "application/json"))
    client = await app_with(settings)
    h = headers()
    run = await new_execution(client, h)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    created = await (await create(client, h, run, name="x.svg", content_type="image/svg+xml",
                                  size_bytes=len(svg))).json()
    await upload(http, created, svg)
    assert (await client.post(created["complete"], headers=h)).status == 200
    redirect = await client.get(created["download"], headers=h, allow_redirects=False)
    async with http.get(redirect.headers["Location"]) as got:
        assert got.headers["Content-Disposition"].startswith("attachment;")
        assert got.headers["Content-Type"] == "image/svg+xml"


async def test_multipart_for_a_file_larger_than_the_part_size(app_with, storage_settings, http, headers):
    settings = msgspec.structs.replace(storage_settings, part_bytes=5 * 1024 * 1024)
    client = await app_with(settings)
    h = headers()
    run = await new_execution(client, h)
    video = os.urandom(11 * 1024 * 1024 + 123)
    resp = await create(client, h, run, name="run.mp4", content_type="video/mp4", size_bytes=len(video),
                        sha256=sha(video), kind="video")
    created = await resp.json()
    assert resp.status == 201 and "upload" not in created
    assert [p["number"] for p in created["parts"]] == [1, 2, 3]
    # Completing before every part is there is refused, and nothing is stored.
    incomplete = await client.post(created["complete"], headers=h)
    assert incomplete.status == 409 and (await incomplete.json())["error"]["field"] == "parts"
    await upload(http, created, video)
    done = await client.post(created["complete"], headers=h)
    assert done.status == 200, await done.text()
    redirect = await client.get(created["download"], headers=h, allow_redirects=False)
    async with http.get(redirect.headers["Location"]) as got:
        assert sha(await got.read()) == sha(video)


async def test_expired_urls_are_refused(app_with, storage_settings, http, headers):
    client = await app_with(msgspec.structs.replace(storage_settings, url_ttl_s=1))
    h = headers()
    run = await new_execution(client, h)
    created = await (await create(client, h, run, size_bytes=len(PNG))).json()
    await asyncio.sleep(2.5)
    up = created["upload"]
    async with http.put(up["url"], data=PNG, headers=up["headers"]) as resp:
        assert resp.status == 403
    # A retried create hands out fresh URLs for the same attachment.
    fresh = await (await create(client, h, run, size_bytes=len(PNG))).json()
    assert fresh["id"] == created["id"]
    await upload(http, fresh, PNG)
    assert (await client.post(created["complete"], headers=h)).status == 200
    redirect = await client.get(created["download"], headers=h, allow_redirects=False)
    await asyncio.sleep(2.5)
    async with http.get(redirect.headers["Location"]) as got:
        assert got.status == 403


async def test_a_foreign_project_sees_nothing(app_with, storage_settings, http, headers):
    client = await app_with(storage_settings)
    mine, theirs = headers(), headers(projects=("other",))
    run = await new_execution(client, mine)
    created = await (await create(client, mine, run, size_bytes=len(PNG))).json()
    await upload(http, created, PNG)
    assert (await create(client, theirs, run, size_bytes=len(PNG))).status == 404
    assert (await client.post(created["complete"], headers=theirs)).status == 404
    assert (await client.post(created["complete"], headers=mine)).status == 200
    foreign = await client.get(f"/v1/attachments/{created['id']}?project=other", headers=theirs,
                               allow_redirects=False)
    missing = await client.get(f"/v1/attachments/{uuid.uuid4()}?project=other", headers=theirs,
                               allow_redirects=False)
    assert foreign.status == missing.status == 404
    assert (await foreign.json())["error"]["code"] == (await missing.json())["error"]["code"]


@pytest.mark.parametrize("body, status, field", [
    ({"size_bytes": 3 * 1024 ** 3}, 413, "size_bytes"),
    ({"size_bytes": 10, "content_type": "text/html"}, 422, "content_type"),
    ({"size_bytes": 10, "name": "../../etc/passwd"}, 422, "name"),
    ({"size_bytes": 10, "name": "a\\b.png"}, 422, "name"),
    ({"size_bytes": 10, "name": "bad\x07name.png"}, 422, "name"),
    ({"size_bytes": 10, "kind": "movie"}, 422, "kind"),
    ({"size_bytes": 10, "sha256": "abc"}, 422, "sha256"),
    ({"size_bytes": -1}, 422, "size_bytes"),
    ({"size_bytes": 10, "attempt": 2}, 422, "attempt"),
    ({"size_bytes": 10, "key": "p/e/x"}, 422, "key"),
])
async def test_bad_input_is_refused_and_nothing_is_stored(app_with, storage_settings, headers, pg, body, status,
                                                          field):
    client = await app_with(storage_settings)
    h = headers()
    run = await new_execution(client, h)
    resp = await create(client, h, run, **body)
    assert resp.status == status, await resp.text()
    assert (await resp.json())["error"]["field"] == field
    assert await rows(pg) == []


async def test_unknown_execution_and_bad_completions(app_with, storage_settings, http, headers, pg):
    client = await app_with(storage_settings)
    h = headers()
    resp = await create(client, h, str(uuid.uuid4()), size_bytes=10)
    assert resp.status == 404 and (await resp.json())["error"]["field"] == "id"
    assert await rows(pg) == []
    run = await new_execution(client, h)
    # Completed before anything was uploaded.
    created = await (await create(client, h, run, size_bytes=len(PNG))).json()
    missing = await client.post(created["complete"], headers=h)
    assert missing.status == 409 and (await missing.json())["error"]["field"] == "upload"
    # The wrong bytes: refused, and the object is deleted.
    await upload(http, created, PNG[:1000])
    wrong = await client.post(created["complete"], headers=h)
    assert wrong.status == 422, await wrong.text()
    assert (await wrong.json())["error"]["field"] == "size_bytes"
    store = client.app[STORAGE]
    assert await store.head(store.key("demo", run, uuid.UUID(created["id"]).hex)) is None
    # The declared digest does not match what was uploaded.
    other = os.urandom(1000)
    bad = await (await create(client, h, run, name="b.png", size_bytes=1000, sha256=sha(b"x"))).json()
    await upload(http, bad, other)
    mismatch = await client.post(bad["complete"], headers=h)
    assert mismatch.status == 422 and (await mismatch.json())["error"]["field"] == "sha256"
    assert all(r["state"] == "pending" for r in await rows(pg))
    page = await (await client.get(f"/v1/executions/{run}/results?project=demo", headers=h)).json()
    assert page["items"] == []
    # A result cannot link an attachment of another execution (or none).
    resp = await client.post(f"/v1/executions/{run}/results", headers=h, json={"results": [
        {"test_id": "t", "name": "t", "status": "passed", "attachments": [{"id": str(uuid.uuid4())}]}]})
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "results[0].attachments[0].id"


async def test_storage_down_refuses_attachments_while_results_land(app_with, storage_settings, headers):
    from atas.common.stack import free_port

    down = msgspec.structs.replace(storage_settings, endpoint_url=f"http://127.0.0.1:{free_port()}")
    client = await app_with(down)
    h = headers()
    run = await new_execution(client, h)
    resp = await create(client, h, run, size_bytes=10)
    assert resp.status == 503 and int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"]["code"] == "storage_unavailable"
    resp = await client.post(f"/v1/executions/{run}/results", headers=h, json={"results": [
        {"test_id": "t", "name": "t", "status": "passed"}]})
    assert resp.status == 200 and (await resp.json())["accepted"] == 1


async def test_deleting_an_execution_removes_its_objects(app_with, storage_settings, http, headers):
    client = await app_with(storage_settings)
    h = headers()
    run = await new_execution(client, h)
    keep = await new_execution(client, h)
    store = client.app[STORAGE]
    made = []
    for execution, name in ((run, "a.png"), (run, "b.png"), (keep, "c.png")):
        created = await (await create(client, h, execution, name=name, size_bytes=len(PNG))).json()
        await upload(http, created, PNG)
        made.append((execution, created["id"]))
    assert await delete_execution_objects(store, "demo", run) == 2
    heads = [await store.head(store.key("demo", e, uuid.UUID(i).hex)) for e, i in made]
    assert heads[0] is None and heads[1] is None and heads[2] is not None
    assert await delete_execution_objects(store, "demo", run) == 0  # idempotent
