"""``atas dev``'s file:// storage: the same create → PUT → complete → download flow, with URLs the
service signs itself (HMAC, expiring) and serves on /v1/storage/."""

from __future__ import annotations

import asyncio
import io
import os

import msgspec
import pytest

from atas.common.storage import STORAGE, StorageSettings, delete_execution_objects
from tests.integration.attachments.conftest import new_execution, sha, upload

pytestmark = pytest.mark.pg


@pytest.fixture
def file_storage(tmp_path) -> StorageSettings:
    return StorageSettings(url=f"file://{tmp_path}", scheme="file", prefix=str(tmp_path / "attachments"),
                           part_bytes=5 * 1024 * 1024)


async def test_round_trip_multipart_and_deletion(app_with, file_storage, http, headers):
    client = await app_with(file_storage)
    base = str(client.make_url(""))
    h = headers()
    run = await new_execution(client, h)
    for data, name, ctype in ((os.urandom(300_000), "shot.png", "image/png"),
                              (os.urandom(6 * 1024 * 1024), "run.webm", "video/webm")):
        resp = await client.post(f"/v1/executions/{run}/attachments", headers=h, json={
            "name": name, "content_type": ctype, "size_bytes": len(data), "sha256": sha(data)})
        created = await resp.json()
        assert resp.status == 201 and all(u["url"].startswith(base + "/v1/storage/")
                                          for u in [created.get("upload")] + (created.get("parts") or []) if u)
        await upload(http, created, data)
        done = await client.post(created["complete"], headers=h)
        assert done.status == 200, await done.text()
        redirect = await client.get(created["download"], headers=h, allow_redirects=False)
        async with http.get(redirect.headers["Location"]) as got:
            assert got.status == 200 and sha(await got.read()) == sha(data)
            assert got.headers["Content-Type"] == ctype
    store = client.app[STORAGE]
    assert await delete_execution_objects(store, "demo", run) == 2
    async with http.get(redirect.headers["Location"]) as gone:
        assert gone.status == 404


async def test_signatures_are_checked_and_expire(app_with, file_storage, http, headers):
    client = await app_with(msgspec.structs.replace(file_storage, url_ttl_s=1))
    h = headers()
    run = await new_execution(client, h)
    created = await (await client.post(f"/v1/executions/{run}/attachments", headers=h, json={
        "name": "a.txt", "content_type": "text/plain", "size_bytes": 5})).json()
    up = created["upload"]
    async with http.put(up["url"].replace("sig=", "sig=x"), data=b"hello", headers=up["headers"]) as resp:
        assert resp.status == 403
    other_key = up["url"].replace("/v1/storage/demo/", "/v1/storage/other/")
    async with http.put(other_key, data=b"hello", headers=up["headers"]) as resp:
        assert resp.status == 403  # the signature covers the key
    await asyncio.sleep(2.2)
    async with http.put(up["url"], data=io.BytesIO(b"hello"), headers=up["headers"]) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "url_expired"
