"""Every page renders the demo data (what `atas dev --demo` loads) with no error on screen.

With ATAS_DASHBOARD_SCREENSHOTS=docs/img this also refreshes the screenshots of docs/dashboard.md:

    ATAS_DASHBOARD_SCREENSHOTS=docs/img scripts/test tests/e2e/dashboard/test_pages.py
"""

from __future__ import annotations

import pytest

from atas.cli.load import run_load

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.pg]


async def test_every_page_renders_demo_data(dashboard, new_page):
    await run_load(dashboard.url, dashboard.token, project="demo", executions=30, tests=120, concurrency=4,
                   progress=False, seed=17)
    live = await dashboard.post("/v1/executions", {"project": "demo", "name": "nightly e2e (chromium)",
                                                   "environment": "staging", "branch": "main", "commit": "9f3c2e1"})
    await dashboard.post(f"/v1/executions/{live['id']}/results", {"results": [
        {"test_id": f"tests/e2e/test_checkout.py::test_step_{k}", "name": f"test_step_{k}",
         "status": "failed" if k == 3 else "passed", "duration_ms": 800 + 40 * k,
         **({"error_type": "TimeoutError", "error_message": "locator('#pay') not visible after 5000 ms"} if k == 3 else {})}
        for k in range(12)]})
    failing = (await dashboard.get("/v1/tests/failing", project="demo", limit=1))["items"][0]
    failed_run = (await dashboard.get("/v1/executions", project="demo", status="failed", limit=1))["items"][0]["id"]
    page = await new_page()
    await page.goto(dashboard.link("demo"))
    await page.wait("location.pathname === '/p/demo'")
    from urllib.parse import quote

    for name, path, ready in [
        ("overview", "/p/demo?range=7d", "[data-ready=overview]"),
        ("trends", "/p/demo/trends?range=7d", "[data-ready=trends]"),
        ("runs", "/p/demo/runs", "[data-ready=runs]"),
        ("run", f"/p/demo/runs/{failed_run}?status=failed,error", "table.results"),
        ("tests", "/p/demo/tests", "[data-ready=tests]"),
        ("flaky", "/p/demo/tests?tab=flaky", "[data-ready=tests], .empty"),
        ("history", f"/p/demo/tests/{quote(failing['test_id'], safe='')}", "[data-ready=history]"),
        ("live", "/p/demo/live", "[data-ready=live] tr[data-id]"),
    ]:
        await page.goto(dashboard.url + path)
        await page.wait(f"document.querySelector({ready!r})")
        assert not await page.eval("!!document.querySelector('[role=alert]')"), name
        if name == "run":
            await page.eval("document.querySelector('table.results details') && (document.querySelector('table.results details').open = true)")
        await page.shot(name)
        if name == "overview":  # the dark theme follows prefers-color-scheme
            await page.devtools.call("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}, page.session)
            assert await page.eval("getComputedStyle(document.body).backgroundColor") == "rgb(17, 20, 27)"
            await page.shot("overview-dark")
            await page.devtools.call("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]}, page.session)
