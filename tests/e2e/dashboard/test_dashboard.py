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


async def test_the_trends_chart_draws_the_apis_buckets_and_a_click_opens_their_runs(dashboard, new_page):
    ids = await seed(dashboard, 3)
    page = await signed_in(dashboard, new_page)
    await page.goto(f"{dashboard.url}/p/demo/trends?range=24h")
    await page.wait("document.querySelector('.chart') && document.querySelector('.chart').uplot")
    rng = await page.eval("(d => ({f: d.from, to: d.to, bucket: d.bucket}))(document.querySelector('[data-bucket]').dataset)")
    api = await dashboard.get("/v1/trends", project="demo", bucket=rng["bucket"], **{"from": rng["f"], "to": rng["to"]})
    drawn = await page.eval("document.querySelector('.chart').uplot.data")
    assert rng["bucket"] == "hour" and len(drawn[0]) == len(api["buckets"]) >= 24
    from datetime import datetime

    assert drawn[0] == [datetime.fromisoformat(b["start"]).timestamp() for b in api["buckets"]]
    assert drawn[1] == [None if b["pass_rate"] is None else pytest.approx(b["pass_rate"] * 100) for b in api["buckets"]]
    assert drawn[2] == [b["executions"] for b in api["buckets"]]
    busy = max(range(len(drawn[2])), key=lambda i: drawn[2][i])
    assert drawn[2][busy] == 3
    # Hover over the busiest bucket shows its numbers; a click opens its runs.
    await page.eval(f"(u => u.setCursor({{left: u.valToPos(u.data[0][{busy}], 'x'), top: 10}}))(document.querySelector('.chart').uplot)")
    assert "3 executions" in await page.wait("document.querySelector('[data-k=readout]').textContent.includes('3 executions') && document.querySelector('[data-k=readout]').textContent")
    await page.shot("trends")
    await page.eval("document.querySelector('.chart .u-over').click()")
    await page.wait("location.pathname === '/p/demo/runs' && document.querySelector('[data-ready=runs]')")
    shown = await page.eval("[...document.querySelectorAll('tr[data-id]')].map(r => r.dataset.id)")
    assert sorted(shown) == sorted(ids)


async def test_paging_runs_older_then_newer_shows_the_apis_pages(dashboard, new_page):
    ids = await seed(dashboard, 7)
    api_pages, cursor = [], None
    while True:
        got = await dashboard.get("/v1/executions", project="demo", limit=3, cursor=cursor)
        api_pages.append([e["id"] for e in got["items"]])
        cursor = got["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in api_pages] == [3, 3, 1] and sorted(sum(api_pages, [])) == sorted(ids)
    page = await signed_in(dashboard, new_page)
    await page.goto(f"{dashboard.url}/p/demo/runs?limit=3")

    async def rows() -> list[str]:
        await page.wait("document.querySelector('[data-ready=runs]')")
        return await page.eval("[...document.querySelectorAll('tr[data-id]')].map(r => r.dataset.id)")

    seen = [await rows()]
    await page.shot("runs")
    for _ in range(2):
        before = seen[-1]
        await page.click("[data-k=older]")
        await page.wait(f"document.querySelector('tr[data-id]') && document.querySelector('tr[data-id]').dataset.id !== {json.dumps(before[0])}")
        seen.append(await rows())
    assert seen == api_pages
    assert await page.eval("document.querySelector('[data-k=older]').disabled")
    for expected in reversed(api_pages[:-1]):
        await page.click("[data-k=newer]")
        await page.wait(f"document.querySelector('tr[data-id]').dataset.id === {json.dumps(expected[0])}")
        assert await rows() == expected
    assert await page.eval("document.querySelector('[data-k=newer]').disabled")
    assert "cursor" not in await page.eval("location.search")


async def test_a_run_started_through_ingest_appears_live_and_its_counters_move_without_reload(dashboard, new_page):
    page = await signed_in(dashboard, new_page)
    await page.goto(f"{dashboard.url}/p/demo/live")
    await page.wait("document.querySelector('[data-ready=live]') && document.querySelector('[data-k=connection]')?.textContent.includes('live')")
    assert "No run in progress" in await page.eval("document.body.innerText")
    await page.eval("window.stayed = true")  # gone if the page reloads
    started = time.monotonic()
    ex = await dashboard.post("/v1/executions", {"project": "demo", "name": "live one", "branch": "main"})
    await page.wait(f"document.querySelector('tr[data-id=\"{ex['id']}\"]')", timeout=2.0)
    appeared = time.monotonic() - started
    sel = f"tr[data-id=\"{ex['id']}\"] [data-c=failed]"
    assert await page.text(sel) == "0"
    started = time.monotonic()
    await dashboard.post(f"/v1/executions/{ex['id']}/results", {"results": [
        {"test_id": "t::a", "name": "a", "status": "failed"}, {"test_id": "t::b", "name": "b", "status": "passed"}]})
    await page.wait(f"document.querySelector('{sel}').textContent === '1'", timeout=2.0)
    moved = time.monotonic() - started
    assert await page.eval("window.stayed === true")
    await page.shot("live")
    await dashboard.post(f"/v1/executions/{ex['id']}/finish")
    await page.wait(f"document.querySelector('tr[data-id=\"{ex['id']}\"] .status').textContent.includes('failed')", timeout=2.0)
    print(f"live: appeared after {appeared:.2f} s, counters moved after {moved:.2f} s")


async def test_run_detail_shows_attempts_errors_and_attachments_and_follows_the_run_live(dashboard, new_page, pg):
    ex = await dashboard.post("/v1/executions", {"project": "demo", "name": "e2e suite", "environment": "ci",
                                                 "build_url": "https://ci.example/builds/7"})
    run_id = ex["id"]
    await dashboard.post(f"/v1/executions/{run_id}/results", {"results": [
        {"test_id": "login::test_ok", "name": "test_ok", "status": "passed", "duration_ms": 120},
        {"test_id": "login::test_flaky", "name": "test_flaky", "status": "failed", "attempt": 1,
         "error_type": "AssertionError", "error_message": "expected 200, got 503", "error_trace": "Traceback (most recent call last):\n  boom",
         "attachments": [{"uri": "s3://bucket/shot.png", "kind": "screenshot", "content_type": "image/png"},
                         {"uri": "https://ci.example/log.txt", "kind": "log", "name": "console log"}]},
        {"test_id": "login::test_flaky", "name": "test_flaky", "status": "passed", "attempt": 2}]})
    page = await signed_in(dashboard, new_page)
    await page.goto(f"{dashboard.url}/p/demo/runs/{run_id}")
    await page.wait("document.querySelector('[data-ready=run]') && document.querySelector('[data-k=connection]')?.textContent.includes('live')")
    assert "running" in await page.text("[data-k=status]")
    flaky = "tr[data-test='login::test_flaky']"
    assert "2 attempts" in await page.text(flaky)
    assert await page.eval(f"[...document.querySelectorAll(\"{flaky} .attempt .status\")].map(s => s.textContent.trim())") == ["✗ failed", "✓ passed"]
    assert "AssertionError" in await page.text(f"{flaky} details summary")
    assert not await page.eval(f"document.querySelector(\"{flaky} details\").open")
    await page.click(f"{flaky} details summary")
    assert "boom" in await page.eval(f"document.querySelector(\"{flaky} details pre.trace\").innerText")
    assert await page.eval(f"document.querySelector(\"{flaky} a.att\").href") == "https://ci.example/log.txt"
    assert await page.text(f"{flaky} .att.uri") == "s3://bucket/shot.png"
    await page.shot("run")
    # Live: a new batch and the finish show up without a reload.
    await page.eval("window.stayed = true")
    await dashboard.post(f"/v1/executions/{run_id}/results", {"results": [
        {"test_id": "cart::test_total", "name": "test_total", "status": "error", "error_message": "db gone"}]})
    await page.wait("document.querySelector(\"tr[data-test='cart::test_total']\")", timeout=3)
    await page.wait("document.querySelector('header.run [data-c=error]').textContent === '1'", timeout=2)
    await dashboard.post(f"/v1/executions/{run_id}/finish")
    await page.wait("document.querySelector('[data-k=status]').textContent.includes('error') || document.querySelector('[data-k=status]').textContent.includes('failed')", timeout=3)
    assert await page.eval("window.stayed === true")
    # The status filter keeps the failing attempts only.
    await page.goto(f"{dashboard.url}/p/demo/runs/{run_id}?status=failed,error")
    await page.wait("document.querySelector('table.results')")
    assert sorted(await page.eval("[...document.querySelectorAll('tr[data-test]')].map(r => r.dataset.test)")) == ["cart::test_total", "login::test_flaky"]


async def test_a_foreign_projects_data_is_never_shown(dashboard, new_page):
    secret_run = await dashboard.run("other", results=[{"test_id": "x::test_secret_thing", "status": "failed"}], name="other-secret-run")
    await seed(dashboard, 1)
    page = await signed_in(dashboard, new_page)  # signed in to demo only
    for path in ("/p/other", "/p/other/runs", f"/p/other/runs/{secret_run}", f"/p/demo/runs/{secret_run}",
                 "/p/other/tests", "/p/other/tests/x%3A%3Atest_secret_thing", "/p/other/live"):
        await page.goto(dashboard.url + path)
        await page.wait("document.querySelector('[role=alert]')")
        text = await page.eval("document.body.innerText")
        assert "other-secret-run" not in text and "test_secret_thing" not in text.replace("x::test_secret_thing", "", 1 if "tests/x" in path else 0)
        assert "Not allowed" in text or "Something went wrong" in text, (path, text)
    # The API itself refuses the cookie for the other project.
    status = await page.eval("fetch('/v1/executions?project=other').then(r => r.status)")
    assert status == 403


async def test_the_sign_in_link_works_once(dashboard, new_page):
    link = dashboard.link("demo")
    first = await new_page()
    await first.goto(link)
    await first.wait("location.pathname === '/p/demo' && document.querySelector('h1')")
    assert await first.eval("document.cookie") == ""  # HttpOnly: not readable by scripts
    again = await new_page()  # another browser context, no cookie
    await again.goto(link)
    await again.wait("document.querySelector('h1')")
    assert "spent" in await again.text("h1")
    await again.goto(f"{dashboard.url}/p/demo")
    await again.wait("document.querySelector('[role=alert]')")
    assert "Not signed in" in await again.eval("document.body.innerText")
    # The sign-in page takes a token instead; a bad one is refused with the reason.
    await again.goto(f"{dashboard.url}/signin")
    await again.wait("document.querySelector('textarea#token')")
    await again.shot("signin")
    await again.eval("document.querySelector('#token').value = 'not-a-token'; document.querySelector('.signin form').submit()")
    await again.wait("location.pathname === '/signin' && document.querySelector('[role=alert]')")
    assert "invalid token" in await again.text("[role=alert]")


async def test_the_keyboard_reaches_and_opens_runs_and_errors(dashboard, new_page):
    run_id = await dashboard.run(results=[{"test_id": "k::test_broken", "status": "failed", "error_message": "kaput"}],
                                 name="keyboard run")
    page = await signed_in(dashboard, new_page)
    await page.goto(f"{dashboard.url}/p/demo/runs")
    await page.wait("document.querySelector('[data-ready=runs]')")

    async def key(name: str, code: str, keycode: int, **extra) -> None:
        for kind in ("keyDown", "keyUp"):
            await page.devtools.call("Input.dispatchKeyEvent", {"type": kind, "key": name, "code": code,
                                                                "windowsVirtualKeyCode": keycode, **extra}, page.session)

    await key("Tab", "Tab", 9)
    assert await page.eval("document.activeElement.textContent") == "Skip to content"
    # Tab until the run's link has the focus, then Enter opens it.
    for _ in range(40):
        if await page.eval("document.activeElement.textContent") == "keyboard run":
            break
        await key("Tab", "Tab", 9)
    else:
        raise AssertionError("Tab never reached the run's link")
    await key("Enter", "Enter", 13, text="\r")
    await page.wait(f"location.pathname === '/p/demo/runs/{run_id}' && document.querySelector('table.results details summary')")
    await page.eval("document.querySelector('table.results details summary').focus()")
    await key("Enter", "Enter", 13, text="\r")
    await page.wait("document.querySelector('table.results details').open")
    assert "kaput" in await page.eval("document.querySelector('table.results details pre').innerText")
