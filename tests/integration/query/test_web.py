"""The dashboard's files and sign-in as HTTP: CSP, long-cache versioned assets, gzip, the cookie."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

from atas.common.auth import COOKIE_NAME
from atas.query.web import WEB, issue_signin_link
from tests.conftest import make_settings
from tests.integration.query.conftest import query_client


async def test_the_page_has_a_strict_csp_and_versioned_immutable_gzipped_assets():
    async with query_client(make_settings()) as client:
        page = await client.get("/p/demo/runs?status=failed", allow_redirects=False)
        assert page.status == 200 and page.headers["Cache-Control"] == "no-cache"
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        html = await page.text()
        assert "<script>" not in html and " style=" not in html  # nothing inline for the CSP to refuse
        version = client.app[WEB].version
        urls = re.findall(r'(?:src|href)="(/assets/[^"]+)"', html)
        assert urls and all(u.startswith(f"/assets/{version}/") for u in urls)
        js = await client.get(f"/assets/{version}/app.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
        assert js.status == 200 and js.headers["Content-Encoding"] == "gzip"
        assert js.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert js.headers["Content-Type"].startswith("text/javascript")
        assert b"render(" in gzip.decompress(await js.read())
        plain = await client.get(f"/assets/{version}/vendor/preact.mjs", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers and len(await plain.read()) > 1000
        # A page from before a deploy asks for its old version: today's file, not cached for a year.
        old = await client.get("/assets/0000000000000000/style.css")
        assert old.status == 200 and old.headers["Cache-Control"] == "no-cache"
        missing = await client.get(f"/assets/{version}/nope.js")
        assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"


async def test_a_sign_in_link_sets_an_httponly_strict_cookie_once():
    async with query_client(make_settings()) as client:
        path = issue_signin_link(client.app, "demo")
        first = await client.get(path, allow_redirects=False)
        assert first.status == 303 and first.headers["Location"] == "/p/demo"
        cookie = first.headers["Set-Cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        session = await client.get("/session")
        body = await session.json()
        assert body["projects"] == ["demo"] and body["scopes"] == ["query:read", "stream:read"]
        second = await client.get(path, allow_redirects=False)
        assert second.status == 410 and "spent" in await second.text()


async def test_signing_in_with_a_token_checks_it_and_refuses_other_origins(token):
    async with query_client(make_settings()) as client:
        good = token(scopes=("query:read", "stream:read"), projects=("web",))
        resp = await client.post("/signin", data={"token": good}, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/p/web"
        assert "HttpOnly" in resp.headers["Set-Cookie"]
        writer = token(scopes=("ingest:write",), projects=("web",))
        resp = await client.post("/signin", data={"token": writer}, allow_redirects=False)
        assert resp.status == 303 and "lacks%20the%20query" in resp.headers["Location"] and "Set-Cookie" not in resp.headers
        resp = await client.post("/signin", data={"token": "junk"}, allow_redirects=False)
        assert resp.headers["Location"].startswith("/signin?error=invalid%20token")
        forged = await client.post("/signin", data={"token": good}, allow_redirects=False,
                                   headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert forged.status == 403 and "Set-Cookie" not in forged.headers
        out = await client.post("/signout", allow_redirects=False)
        assert out.status == 303 and f"{COOKIE_NAME}=\"\"" in out.headers["Set-Cookie"]


def test_the_vendored_files_are_the_ones_recorded_and_the_page_names_only_existing_assets():
    root = Path(__file__).resolve().parents[3]
    check = subprocess.run([str(root / "scripts" / "vendor-js"), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    from atas.query.web import WEB_DIR, load_assets

    _, assets = load_assets()
    named = re.findall(r"/assets/\{\{version\}\}/([^\"]+)", (WEB_DIR / "index.html").read_text())
    assert named and all(n in assets for n in named)
    for rel, asset in assets.items():  # every relative import of a module resolves to a served file
        if rel.endswith((".js", ".mjs")):
            for imported in re.findall(rb"from\s*[\"'](\.{1,2}/[^\"']+)[\"']", asset.body):
                target = (Path(rel).parent / imported.decode()).as_posix()
                import posixpath

                assert posixpath.normpath(target) in assets, f"{rel} imports {imported.decode()}"
