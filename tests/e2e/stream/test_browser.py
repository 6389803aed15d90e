"""A real browser's EventSource (headless Chromium, driven over the DevTools protocol) gets live events."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest

from atas.common.bus import MemoryBus
from atas.stream.config import StreamConfig
from tests.conftest import make_settings
from tests.helpers import stop_process
from tests.integration.stream.conftest import envelope, messages

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.redis]

CHROMIUM = "/usr/bin/chromium"


class DevTools:
    """Minimal CDP client: one browser websocket, flattened sessions, request/response by id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        while True:
            reply = json.loads((await self.ws.receive(timeout=60)).data)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, session: str, expression: str):
        result = await self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                      "returnByValue": True}, session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture
async def chromium(tmp_path):
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log = open(tmp_path / "chromium.log", "wb")
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=log, stderr=subprocess.STDOUT)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                assert proc.poll() is None, (tmp_path / "chromium.log").read_text()
                await asyncio.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        stop_process(proc, 15)
        log.close()


async def test_a_browser_eventsource_receives_a_live_event(chromium, apps, redis_settings, prefix, token):
    bus = MemoryBus()
    app = await apps.start(make_settings(redis=redis_settings), StreamConfig(redis_prefix=prefix), bus=bus)
    await app.bridge_ready()
    target = await chromium.call("Target.createTarget", {"url": "about:blank"})
    session = (await chromium.call("Target.attachToTarget", {"targetId": target["targetId"],
                                                             "flatten": True}))["sessionId"]
    await chromium.call("Page.enable", {}, session)
    await chromium.call("Page.navigate", {"url": f"{app.url}/healthz"}, session)  # same origin as the stream
    async with asyncio.timeout(30):
        while await chromium.evaluate(session, "document.readyState") != "complete" or \
                not (await chromium.evaluate(session, "location.href")).startswith(app.url):
            await asyncio.sleep(0.1)
    opened = await chromium.evaluate(session, f"""
        new Promise((resolve, reject) => {{
            window.got = [];
            const es = new EventSource('/v1/stream?project=demo&access_token={token()}');
            window.es = es;
            es.addEventListener('results.recorded', e => window.got.push({{id: e.lastEventId, data: e.data}}));
            es.onopen = () => resolve('open');
            es.onerror = () => reject('error, readyState=' + es.readyState);
        }})""")
    assert opened == "open"
    sent = envelope("demo", seq=1)
    pub = bus.publisher()
    await pub.publish(messages([sent]))
    got = await chromium.evaluate(session, """
        new Promise(resolve => {
            const check = () => window.got.length ? resolve(window.got) : setTimeout(check, 50);
            check();
        })""")
    assert json.loads(got[0]["data"])["id"] == sent.id
    assert got[0]["id"].count("-") == 1  # the history position, what the browser resumes from
    await chromium.evaluate(session, "window.es.close(), 'closed'")
