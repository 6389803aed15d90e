"""``atas attach EXECUTION FILE...``: what a CI step or a shell script uses."""

from __future__ import annotations

import asyncio

import pytest

from atas.cli.main import main
from atas.common.storage import StorageSettings
from tests.integration.attachments.conftest import new_execution

pytestmark = pytest.mark.pg


async def test_attach_files_and_report_refusals(app_with, tmp_path, headers, token, capsys):
    client = await app_with(StorageSettings(url="file://x", scheme="file", prefix=str(tmp_path / "store")))
    h = headers()
    run = await new_execution(client, h)
    (tmp_path / "run.log").write_text("line\n" * 1000)
    (tmp_path / "page.html").write_text("<script>alert(1)</script>")
    argv = ["attach", run, str(tmp_path / "run.log"), str(tmp_path / "page.html"), "--test-id", "t::1",
            "--url", str(client.make_url("")), "--token", token(scopes=("ingest:write",))]
    code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr()
    assert code == 1
    assert "run.log:" in out.out and " log 5000 B " in out.out
    assert "page.html" in out.err and "field content_type" in out.err
    await client.post(f"/v1/executions/{run}/results", headers=h,
                      json={"results": [{"test_id": "t::1", "name": "t", "status": "passed"}]})
    page = await (await client.get(f"/v1/executions/{run}/results?project=demo", headers=h)).json()
    assert [a["name"] for a in page["items"][0]["attachments"]] == ["run.log"]
