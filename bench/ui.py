"""Benchmark of the web dashboard: page weight, and time to useful numbers in headless Chromium.

    scripts/bench ui                 # demo data (30 runs x 120 tests) + one 5,000-result run
    scripts/bench ui --repeat 10

Starts `atas dev` (embedded PostgreSQL, in-process events) in a temporary folder, loads the demo
data through the ingest API, signs a fresh Chromium in with the one-time link `atas dev` prints, and
measures navigation start → the page's numbers in the DOM (a MutationObserver installed before the
page's own scripts; `performance.now()` counts from navigation start).

Reported (last stdout line, one JSON object):

* ``js_kb_gz`` / ``css_kb_gz``: every JavaScript / CSS asset the dashboard serves, gzipped as it
  serves them (the app imports every page module, so this is what a first visit downloads);
* ``overview_ready_ms``: median over ``--repeat`` loads of the overview (first load: ``_first``);
* ``run_detail_ready_ms``: the same for a run of 5,000 results (first page of results rendered).
Goals from issue #17: JS ≤ 150 KB gzipped, overview ≤ 500 ms, run detail ≤ 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from atas.cli.load import run_load
from atas.query.web import load_assets

CHROMIUM = os.environ.get("ATAS_CHROMIUM", "/usr/bin/chromium")
READY = """(() => { const sel = %s; new MutationObserver((m, o) => {
  if (document.querySelector(sel)) { window.__ready = performance.now(); o.disconnect(); } })
  .observe(document, {childList: true, subtree: true}); })()"""


def log(msg: str) -> None:
    print(f"[bench ui] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevTools:
    """Minimal DevTools protocol client (one browser websocket, flattened sessions)."""

    def __init__(self, ws):
        self.ws, self._ids = ws, itertools.count(1)

    async def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        msg_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params or {},
                                           **({"sessionId": session} if session else {})}))
        while True:
            reply = json.loads((await self.ws.receive(timeout=60)).data)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def eval(self, session: str, expression: str):
        got = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return got["result"].get("value")


async def ready_ms(cdp: DevTools, session: str, url: str, selector: str) -> float:
    script = await cdp.call("Page.addScriptToEvaluateOnNewDocument", {"source": READY % json.dumps(selector)}, session)
    try:
        await cdp.call("Page.navigate", {"url": url}, session)
        async with asyncio.timeout(30):
            while True:
                try:
                    got = await cdp.eval(session, "window.__ready")
                except RuntimeError:
                    got = None
                if got:
                    return got
                await asyncio.sleep(0.01)
    finally:
        await cdp.call("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]}, session)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--results", type=int, default=5000, help="results of the big run (default 5000)")
    args = ap.parse_args()

    _, assets = load_assets()
    gz = lambda a: len(a.gzipped if a.gzipped is not None else a.body)  # noqa: E731
    js_kb = sum(gz(a) for a in assets.values() if a.content_type == "text/javascript") / 1024
    css_kb = sum(gz(a) for a in assets.values() if a.content_type == "text/css") / 1024

    tmp = Path(tempfile.mkdtemp(prefix="atas-bench-ui-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DB_URL", "REDIS_HOST", "KAFKA_BOOTSTRAP_SERVERS", "JWT_SECRET")}
    out = open(tmp / "dev.log", "wb")
    dev = subprocess.Popen([sys.executable, "-m", "atas.cli.main", "dev", "--data-dir", str(tmp / "data"), "--port", str(port)],
                           stdout=out, stderr=subprocess.STDOUT, env=env)
    chromium = None
    try:
        base = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(120):
            while not (m := re.search(r"Dashboard +(http://\S+/signin/link/\S+)", (tmp / "dev.log").read_text())):
                assert dev.poll() is None, (tmp / "dev.log").read_text()
                await asyncio.sleep(0.2)
        link = m.group(1)
        token = (tmp / "data" / "dev_token").read_text().strip()
        log("atas dev is up; loading demo data")
        await run_load(base, token, project="demo", executions=30, tests=120, concurrency=4, progress=False, seed=17)
        h = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=h) as http:
            async with http.post(f"{base}/v1/executions", json={"id": str(uuid.uuid4()), "project": "demo", "name": "big run"}) as r:
                big = (await r.json())["id"]
            for start in range(0, args.results, 1000):
                rows = [{"test_id": f"tests/test_big.py::test_{k}", "name": f"test_{k}", "duration_ms": 10,
                         "status": "failed" if k % 50 == 0 else "passed",
                         **({"error_message": "assert 1 == 2", "error_trace": "Traceback…"} if k % 50 == 0 else {})}
                        for k in range(start, min(start + 1000, args.results))]
                async with http.post(f"{base}/v1/executions/{big}/results", json={"results": rows}) as r:
                    assert r.status == 200, await r.text()
            async with http.post(f"{base}/v1/executions/{big}/finish") as r:
                assert r.status == 200
        log(f"loaded; {args.results}-result run {big}")

        profile = tmp / "chromium"
        profile.mkdir()
        chromium = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync", "--no-first-run",
                                     f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                await asyncio.sleep(0.1)
        cport, path = port_file.read_text().splitlines()[:2]
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{cport}{path}", max_msg_size=0) as ws:
            cdp = DevTools(ws)
            target = await cdp.call("Target.createTarget", {"url": "about:blank"})
            session = (await cdp.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}))["sessionId"]
            await cdp.call("Page.enable", {}, session)
            await ready_ms(cdp, session, link, "[data-ready=overview]")  # signs in, lands on the overview
            overview = [await ready_ms(cdp, session, f"{base}/p/demo", "[data-ready=overview]") for _ in range(args.repeat)]
            run = [await ready_ms(cdp, session, f"{base}/p/demo/runs/{big}", "table.results") for _ in range(args.repeat)]
        result = {"js_kb_gz": round(js_kb, 1), "css_kb_gz": round(css_kb, 1),
                  "overview_ready_ms": round(statistics.median(overview), 1), "overview_ready_ms_first": round(overview[0], 1),
                  "run_detail_ready_ms": round(statistics.median(run), 1), "run_detail_ready_ms_first": round(run[0], 1),
                  "run_results": args.results, "repeat": args.repeat}
        print(json.dumps(result))
    finally:
        for proc in (chromium, dev):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        out.close()


if __name__ == "__main__":
    t0 = time.monotonic()
    asyncio.run(main())
    log(f"done in {time.monotonic() - t0:.0f} s")
