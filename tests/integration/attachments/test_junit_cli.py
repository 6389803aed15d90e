"""``atas import junit --attachments-dir``: files a report references with ``[[ATTACHMENT|path]]``
(Jenkins, GitLab, Playwright) are uploaded and listed with their test's final attempt."""

from __future__ import annotations

import asyncio

import pytest

from atas.cli.main import main
from atas.common.storage import StorageSettings

pytestmark = pytest.mark.pg

REPORT = b"""<?xml version="1.0"?>
<testsuite name="e2e" tests="2">
  <testcase classname="login" name="works" time="1.2">
    <failure message="boom">trace</failure>
    <system-out>[[ATTACHMENT|shots/login.png]]
[[ATTACHMENT|../../../etc/passwd]]</system-out>
  </testcase>
  <testcase classname="cart" name="adds" time="0.3"/>
</testsuite>
"""


async def test_report_attachments_are_uploaded_and_linked(app_with, tmp_path, headers, token, capsys):
    client = await app_with(StorageSettings(url="file://x", scheme="file", prefix=str(tmp_path / "store")))
    (tmp_path / "out" / "shots").mkdir(parents=True)
    (tmp_path / "out" / "shots" / "login.png").write_bytes(b"\x89PNG" + b"x" * 5000)
    (tmp_path / "report.xml").write_bytes(REPORT)
    argv = ["import", "junit", str(tmp_path / "report.xml"), "--project", "demo", "--url", str(client.make_url("")),
            "--token", token(scopes=("ingest:write",)), "--attachments-dir", str(tmp_path / "out")]
    code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr()
    assert code == 1  # the reference outside the folder is refused, and the exit code says so
    assert "1 attachments uploaded, 1 not" in out.out and "../../../etc/passwd" in out.err
    execution = out.out.split("as execution ")[1].split()[0]
    page = await (await client.get(f"/v1/executions/{execution}/results?project=demo", headers=headers())).json()
    by_test = {r["test_id"]: r.get("attachments") for r in page["items"]}
    assert [a["name"] for a in by_test["login::works"]] == ["login.png"]
    assert by_test["cart::adds"] is None
