"""The dashboard under test: ingest + query + stream on one app (as `atas dev` runs them) on a real
PostgreSQL, and pages in real headless Chromium driven over the DevTools protocol."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from atas.common.app import create_app
from atas.common.bus import MemoryBus
from atas.common.config import CacheTtls
from atas.common.engines import install_engines
from atas.ingest.app import setup as setup_ingest
from atas.ingest.config import IngestConfig
from atas.query.app import setup as setup_query
from atas.query.config import QueryConfig
from atas.query.web import issue_signin_link
from atas.stream.app import setup as setup_stream
from atas.stream.config import StreamConfig
from tests.conftest import make_settings
from tests.e2e.stream.test_browser import chromium  # noqa: F401 - pytest fixture

# Set to a folder (e.g. docs/img) to save a PNG of every page the tests visit.
SHOTS = os.environ.get("ATAS_DASHBOARD_SCREENSHOTS")


class Dashboard:
    """The running app, an API client with a Bearer token, and helpers to write data through ingest."""

    def __init__(self, app, server: TestServer, http: aiohttp.ClientSession, token: str):
        self.app, self.server, self.http, self.token = app, server, http, token
        self.url = str(server.make_url("")).rstrip("/")

    def link(self, project: str = "demo") -> str:
        return self.url + issue_signin_link(self.app, project)

    async def get(self, path: str, **params) -> dict:
        params = {k: v for k, v in params.items() if v is not None}
        async with self.http.get(self.url + path, params=params, headers=self._h()) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def post(self, path: str, body: dict | None = None) -> dict:
        async with self.http.post(self.url + path, json=body or {}, headers=self._h()) as resp:
            assert resp.status in (200, 201), await resp.text()
            return await resp.json()

    def _h(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    async def run(self, project: str = "demo", *, results: list[dict], finish: bool = True, **fields) -> str:
        """One execution with ``results`` (dicts with at least test_id and status), through ingest."""
        ex = await self.post("/v1/executions", {"id": str(uuid.uuid4()), "project": project,
                                                "name": fields.pop("name", "run"), **fields})
        if results:
            rows = [{"name": r["test_id"].rsplit("::", 1)[-1], "attempt": 1, "duration_ms": 100, **r} for r in results]
            await self.post(f"/v1/executions/{ex['id']}/results", {"results": rows})
        if finish:
            await self.post(f"/v1/executions/{ex['id']}/finish")
        return ex["id"]


@pytest.fixture
async def dashboard(pg, token):
    settings = make_settings(db_dsn=pg, mode="dev", cache_ttl=CacheTtls())
    app = create_app(settings, "dev")
    install_engines(app, application_name="atas-dashboard-test", bus=MemoryBus())
    setup_ingest(app, IngestConfig(relay_poll_s=0.05, relay_backoff_max_s=1.0))
    setup_query(app, QueryConfig(rollup_interval_ms=100))
    setup_stream(app, StreamConfig())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Dashboard(app, server, http, token(projects=("demo", "other")))
    await server.close()


class Page:
    """One tab in its own browser context (its own cookies)."""

    def __init__(self, devtools, session: str, context: str):
        self.devtools, self.session, self.context = devtools, session, context

    async def goto(self, url: str) -> None:
        await self.devtools.call("Page.navigate", {"url": url}, self.session)
        await self.wait("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def eval(self, expression: str):
        return await self.devtools.evaluate(self.session, expression)

    async def wait(self, expression: str, timeout: float = 15.0):
        """Poll ``expression`` until truthy; its value. Fails with the page's text if it never is."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        got = await self.eval(f"(() => {{ try {{ const v = ({expression}); return v instanceof Element ? true : v; }} catch (e) {{ return null; }} }})()")
                    except RuntimeError:  # the page navigated away while being asked
                        got = None
                    if got:
                        return got
                    await asyncio.sleep(0.05)
        except TimeoutError:
            text = await self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''")
            raise AssertionError(f"timed out waiting for {expression!r}; page shows:\n{text}") from None

    async def text(self, selector: str) -> str:
        return await self.eval(f"document.querySelector({json.dumps(selector)}).textContent.trim()")

    async def click(self, selector: str) -> None:
        await self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    async def shot(self, name: str) -> None:
        if not SHOTS:
            return
        await self.devtools.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 860, "deviceScaleFactor": 1,
                                                                         "mobile": False}, self.session)
        await asyncio.sleep(0.3)
        shot = await self.devtools.call("Page.captureScreenshot", {"format": "png"}, self.session)
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        (Path(SHOTS) / f"dashboard-{name}.png").write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture
def new_page(chromium):  # noqa: F811 - the fixture imported above
    async def make() -> Page:
        context = (await chromium.call("Target.createBrowserContext"))["browserContextId"]
        target = await chromium.call("Target.createTarget", {"url": "about:blank", "browserContextId": context})
        session = (await chromium.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}))["sessionId"]
        await chromium.call("Page.enable", {}, session)
        await chromium.call("Runtime.enable", {}, session)
        return Page(chromium, session, context)

    return make
