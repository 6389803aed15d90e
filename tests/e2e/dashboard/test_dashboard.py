"""The dashboard in a real browser shows what the API answers, and only to whom it may."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.pg]

STATUSES = ("passed", "failed", "error", "skipped")


def pct(x):
    return "—" if x is None else f"{x * 100:.1f} %"


def num(x):
    return f"{x:,}"


def dur(ms):
    """The page's dur() (api.js), for comparing what it shows with the API's numbers."""
    if ms is None:
        return "—"
    ms = int(ms + 0.5)
    if ms < 1000:
        return f"{ms} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    m = int(s // 60)
    return f"{m} min {round(s % 60)} s" if m < 60 else f"{m // 60} h {m % 60} min"


async def seed(d, n: int = 5) -> list[str]:
    ids = []
    for i in range(n):
        results = [{"test_id": f"tests/test_app.py::test_{k}", "status": STATUSES[(i + k) % 4], "duration_ms": 50 * (k + i + 1)}
                   for k in range(6)]
        ids.append(await d.run(results=results, name=f"nightly #{i}", environment="ci" if i % 2 else "staging",
                               branch="main", commit=f"c0ffee{i}"))
    return ids


async def signed_in(d, new_page):
    page = await new_page()
    await page.goto(d.link("demo"))
    await page.wait("location.pathname === '/p/demo'")
    return page


async def test_the_overview_shows_the_apis_numbers_for_the_same_range(dashboard, new_page):
    await seed(dashboard)
    page = await signed_in(dashboard, new_page)
    for query in ("?range=30d", "?range=24h&environment=ci"):
        await page.goto(f"{dashboard.url}/p/demo{query}")
        await page.wait("document.querySelector('[data-ready=overview]')")
        rng = await page.eval("(({from: f, to}) => ({f, to}))(document.querySelector('[data-ready=overview]').dataset)")
        api = await dashboard.get("/v1/dashboard/overview", project="demo", limit=10, **{"from": rng["f"], "to": rng["to"]},
                                  environment="ci" if "ci" in query else None)
        shown = await page.eval("Object.fromEntries([...document.querySelectorAll('[data-k]')].map(e => [e.dataset.k, e.textContent.trim()]))")
        assert api["executions"] > 0
        assert shown["pass_rate"] == pct(api["pass_rate"])
        assert shown["executions"] == num(api["executions"])
        for status, n in api["executions_by_status"].items():
            assert shown[f"executions_{status}"] == num(n)
        for status, n in api["results_by_status"].items():
            assert shown[f"results_{status}"] == num(n)
        assert shown["duration_mean"] == dur(api["duration"]["mean_ms"])
        assert shown["duration_p95"] == dur(api["duration"]["p95_ms"])
        names = await page.eval("[...document.querySelectorAll('[data-k=top_failing] tbody tr a')].map(a => a.textContent)")
        assert names == [t["name"] for t in api["top_failing_tests"]]
    await page.shot("overview")
