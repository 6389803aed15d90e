"""Retention deletes the stored objects of the executions it removes, on the real S3-compatible
server, and leaves every other execution's objects alone."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from atas.common.retention import run_retention
from atas.common.storage import STORAGE
from tests.conftest import TEST_JWT_SECRET
from tests.integration.attachments.conftest import upload

pytestmark = [pytest.mark.pg, pytest.mark.s3]

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(50 * 1024)


async def stored_attachment(client, http, h, started_at: datetime) -> tuple[str, str]:
    """An execution started at ``started_at`` with one uploaded and completed screenshot."""
    resp = await client.post("/v1/executions", headers=h, json={
        "project": "demo", "name": "nightly", "id": str(uuid.uuid4()), "started_at": started_at.isoformat()})
    assert resp.status == 201, await resp.text()
    execution = (await resp.json())["id"]
    resp = await client.post(f"/v1/executions/{execution}/attachments", headers=h, json={
        "name": "login.png", "content_type": "image/png", "size_bytes": len(PNG), "kind": "screenshot"})
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    await upload(http, created, PNG)
    resp = await client.post(f"/v1/attachments/{created['id']}/complete", headers=h)
    assert resp.status == 200, await resp.text()
    return execution, created["id"]


async def test_retention_deletes_the_objects_of_removed_executions(app_with, storage_settings, http, headers, pg):
    client = await app_with(storage_settings)
    store = client.app[STORAGE]
    h = headers()
    now = datetime.now(UTC)
    old = await stored_attachment(client, http, h, now - timedelta(days=120))
    new = await stored_attachment(client, http, h, now - timedelta(days=3))

    def key(pair: tuple[str, str]) -> str:
        return store.key("demo", pair[0], uuid.UUID(pair[1]).hex)

    assert await store.head(key(old)) is not None and await store.head(key(new)) is not None

    plan = await run_retention(pg, days=90, dry_run=True, storage=storage_settings, jwt_secret=TEST_JWT_SECRET)
    assert plan.removed["attachment_objects"].rows == 1
    assert plan.removed["attachment_objects"].bytes == len(PNG)
    assert await store.head(key(old)) is not None  # a dry run deletes nothing

    report = await run_retention(pg, days=90, storage=storage_settings, jwt_secret=TEST_JWT_SECRET)
    assert report.removed["executions"].rows == 1
    assert report.removed["attachment_objects"].rows == 1
    assert report.removed["attachment_objects"].bytes == len(PNG)
    assert report.notes == []
    assert await store.head(key(old)) is None
    assert await store.head(key(new)) is not None
    conn = await asyncpg.connect(pg)
    try:
        left = {str(r["execution_id"]) for r in await conn.fetch("SELECT execution_id FROM attachments")}
    finally:
        await conn.close()
    assert left == {new[0]}
    # The download of a removed attachment now answers like a missing one.
    resp = await client.get(f"/v1/attachments/{old[1]}?project=demo", headers=h, allow_redirects=False)
    assert resp.status == 404


async def test_without_storage_configured_the_summary_says_objects_were_left(
        app_with, storage_settings, http, headers, pg):
    client = await app_with(storage_settings)
    store = client.app[STORAGE]
    old = await stored_attachment(client, http, headers(), datetime.now(UTC) - timedelta(days=120))
    report = await run_retention(pg, days=90)
    assert report.removed["executions"].rows == 1
    assert any("lifecycle rule" in note for note in report.notes)
    assert await store.head(store.key("demo", old[0], uuid.UUID(old[1]).hex)) is not None
