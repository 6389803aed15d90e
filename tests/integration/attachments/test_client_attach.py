"""``atas.client``'s ``attach``: create → PUT (multipart when large) → complete, against S3Proxy."""

from __future__ import annotations

import os

import msgspec
import pytest

from atas.client import AsyncClient
from tests.integration.attachments.conftest import new_execution, sha

pytestmark = [pytest.mark.pg, pytest.mark.s3]


async def test_attach_small_and_large_files(app_with, storage_settings, http, headers, token, tmp_path):
    client = await app_with(msgspec.structs.replace(storage_settings, part_bytes=5 * 1024 * 1024))
    h = headers()
    run = await new_execution(client, h)
    shot, video = tmp_path / "login.png", tmp_path / "run.webm"
    shot.write_bytes(os.urandom(200_000))
    video.write_bytes(os.urandom(7 * 1024 * 1024))
    progress: list[tuple[int, int]] = []
    async with AsyncClient(str(client.make_url("")), token(scopes=("ingest:write",))) as atas:
        small = await atas.attach(run, shot, test_id="login::ok", attempt=1)
        large = await atas.attach(run, video, test_id="login::ok", progress=lambda s, t: progress.append((s, t)))
        again = await atas.attach(run, shot, test_id="login::ok", attempt=1)  # a retried step
    assert (small.kind, small.content_type, large.kind, large.content_type) == (
        "screenshot", "image/png", "video", "video/webm")
    assert again.id == small.id and progress[-1] == (video.stat().st_size,) * 2 and len(progress) == 2
    await client.post(f"/v1/executions/{run}/results", headers=h, json={"results": [
        {"test_id": "login::ok", "name": "login", "status": "failed"}]})
    page = await (await client.get(f"/v1/executions/{run}/results?project=demo", headers=h)).json()
    listed = {a["name"]: a for a in page["items"][0]["attachments"]}
    assert set(listed) == {"login.png", "run.webm"}
    for name, path in (("login.png", shot), ("run.webm", video)):
        redirect = await client.get(listed[name]["download"], headers=h, allow_redirects=False)
        async with http.get(redirect.headers["Location"]) as got:
            assert sha(await got.read()) == sha(path.read_bytes())
