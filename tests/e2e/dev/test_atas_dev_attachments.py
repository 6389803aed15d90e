"""`atas dev` with nothing configured for storage: attachments live under its data dir and go
through the URLs it signs itself — the same harness code as against S3."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import uuid

import aiohttp
import pytest

from atas.client import Client
from atas.common.db import create_database, drop_database
from tests.helpers import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

_DROP = ("DB_URL", "DB_USER", "DB_PASSWORD", "REDIS_HOST", "REDIS_PORT", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC",
         "JWT_SECRET", "ATAS_URL", "ATAS_TOKEN", "STORAGE_URL", "S3_ENDPOINT_URL", "S3_REGION")


async def test_attach_download_and_file_on_disk(pg, pg_server_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    env["DB_URL"] = await create_database(pg_server_url, f"atas_dev_{secrets.token_hex(4)}")
    data_dir = tmp_path / "data"
    dev = ServiceProcess(["dev", "--data-dir", str(data_dir)], env, tmp_path, "atas-dev")
    try:
        dev.wait_healthy(timeout=90, path="/readyz")
        assert f"attachments file://{data_dir.resolve() / 'attachments'}" in dev.logs()
        token = (data_dir / "dev_token").read_text().strip()
        shot = tmp_path / "login.png"
        shot.write_bytes(os.urandom(300_000))

        def harness():
            with Client(dev.url, token) as atas:
                run = atas.start_execution("demo", "dev attachments", id=uuid.uuid4())
                return run, atas.attach(run.id, shot, test_id="login::ok")

        run, stored = await asyncio.to_thread(harness)
        assert stored.state == "stored" and stored.kind == "screenshot"
        on_disk = list((data_dir / "attachments" / "demo" / str(run.id)).iterdir())
        assert [p.read_bytes() for p in on_disk] == [shot.read_bytes()]
        async with aiohttp.ClientSession() as session:
            async with session.get(dev.url + stored.download, headers={"Authorization": f"Bearer {token}"}) as got:
                assert got.status == 200 and got.headers["Content-Type"] == "image/png"
                assert hashlib.sha256(await got.read()).digest() == hashlib.sha256(shot.read_bytes()).digest()
    finally:
        dev.stop()
        await drop_database(env["DB_URL"])
