"""docs/client.md's examples run as written against a real ingest (and say what they claim)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.pg

DOC = Path(__file__).parents[3] / "docs" / "client.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


async def test_the_sync_and_async_examples_of_the_client_docs_run(ingest, token, monkeypatch):
    client = await ingest()
    monkeypatch.setenv("ATAS_URL", str(client.make_url("")).rstrip("/"))
    monkeypatch.setenv("ATAS_TOKEN", token(scopes=["ingest:write"], projects=["web"]))
    examples = _examples()
    assert len(examples) == 2

    def run(code: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), {"__name__": "__main__"})  # noqa: S102 - our own docs
        # the in-process server logs to the same stdout: keep the example's own lines
        return "\n".join(line for line in out.getvalue().splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line))

    sync_out = (await asyncio.to_thread(run, examples[0])).split("\n")
    assert sync_out[0] == "passed"                 # derived from final attempts
    assert sync_out[1].startswith("422 project ")  # the refused key, with its field
    assert (await asyncio.to_thread(run, examples[1])).strip() == "1200 0"
