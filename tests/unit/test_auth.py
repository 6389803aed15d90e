"""Auth through a real aiohttp app on loopback (no external servers)."""

import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.auth import mint_token, require
from atas.common.config import Settings

SECRET = "unit-secret-" + "y" * 40


@pytest.fixture
async def client():
    app = create_app(Settings(db=None, redis=None, kafka=None, jwt_secret=SECRET), "test")

    async def handler(request: web.Request) -> web.Response:
        principal = require(request, SECRET, "query:read", request.match_info["project"])
        return web.json_response({"sub": principal.subject})

    async def live(request: web.Request) -> web.Response:  # like the SSE endpoint
        principal = require(request, SECRET, "query:read", request.match_info["project"], allow_query=True)
        return web.json_response({"sub": principal.subject})

    app.router.add_get("/p/{project}", handler)
    app.router.add_get("/live/{project}", live)
    async with TestClient(TestServer(app)) as c:
        yield c


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def test_valid_token_for_scope_and_project_is_accepted(client):
    t = mint_token(SECRET, subject="ci", scopes=["query:read"], projects=["web"])
    r = await client.get("/p/web", headers=bearer(t))
    assert r.status == 200 and (await r.json())["sub"] == "ci"


async def test_missing_token_is_401_with_challenge(client):
    r = await client.get("/p/web")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await r.json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("token", ["garbage", mint_token("other-secret-" + "z" * 40, subject="x",
                                                          scopes=["query:read"], projects=["web"])])
async def test_bad_or_foreign_token_is_401(client, token):
    assert (await client.get("/p/web", headers=bearer(token))).status == 401


async def test_expired_token_is_401(client):
    t = mint_token(SECRET, subject="ci", scopes=["query:read"], projects=["web"], ttl_seconds=60,
                   now=time.time() - 3600)
    r = await client.get("/p/web", headers=bearer(t))
    assert r.status == 401 and "expired" in (await r.json())["error"]["message"]


async def test_wrong_scope_is_403(client):
    t = mint_token(SECRET, subject="ci", scopes=["ingest:write"], projects=["web"])
    r = await client.get("/p/web", headers=bearer(t))
    assert r.status == 403 and "scope" in (await r.json())["error"]["message"]


async def test_wrong_project_is_403(client):
    t = mint_token(SECRET, subject="ci", scopes=["query:read"], projects=["api"])
    r = await client.get("/p/web", headers=bearer(t))
    assert r.status == 403 and "web" in (await r.json())["error"]["message"]


async def test_wildcard_project_token(client):
    t = mint_token(SECRET, subject="admin", scopes=["query:read"], projects=["*"])
    assert (await client.get("/p/anything", headers=bearer(t))).status == 200


async def test_unknown_route_is_a_json_404_with_request_id(client):
    r = await client.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert r.status == 404
    assert r.headers["X-Request-ID"] == "abc-123"
    assert (await r.json())["error"]["status"] == 404


def test_minting_rejects_unknown_scopes():
    with pytest.raises(ValueError, match="unknown scope"):
        mint_token(SECRET, subject="x", scopes=["admin"], projects=["p"])


async def test_a_token_without_expiry_is_401_naming_the_claim(client):
    """Tokens minted elsewhere must expire too: one that never does cannot be contained if it leaks."""
    import jwt

    forever = jwt.encode({"sub": "ci", "iss": "atas", "iat": int(time.time()), "scopes": ["query:read"],
                          "projects": ["web"]}, SECRET, algorithm="HS256")
    r = await client.get("/p/web", headers=bearer(forever))
    assert r.status == 401 and '"exp"' in (await r.json())["error"]["message"]


@pytest.mark.parametrize("ttl", [0, -5])
def test_minting_refuses_a_token_that_never_expires(ttl):
    with pytest.raises(ValueError, match="at least 1 second"):
        mint_token(SECRET, subject="x", scopes=["query:read"], projects=["p"], ttl_seconds=ttl)


def test_the_token_command_refuses_ttl_zero(capsys, monkeypatch):
    from atas.cli.main import main

    monkeypatch.setenv("JWT_SECRET", SECRET)
    assert main(["token", "-p", "web", "--ttl", "0"]) == 2
    assert "31536000" in capsys.readouterr().err


async def test_an_explicit_query_token_wins_over_a_stale_cookie_and_a_proxys_basic_header(client):
    good = mint_token(SECRET, subject="fresh", scopes=["query:read"], projects=["web"])
    stale = mint_token(SECRET, subject="stale", scopes=["query:read"], projects=["web"], ttl_seconds=60,
                       now=time.time() - 3600)
    client.session.cookie_jar.update_cookies({"atas_token": stale})
    r = await client.get(f"/live/web?access_token={good}", headers={"Authorization": "Basic cHJveHk6cHc="})
    assert r.status == 200 and (await r.json())["sub"] == "fresh"
    r = await client.get("/live/web", headers=bearer(good))  # a Bearer header still comes first
    assert r.status == 200 and (await r.json())["sub"] == "fresh"
    r = await client.get("/live/web")  # only the stale cookie left
    assert r.status == 401 and "expired" in (await r.json())["error"]["message"]
    client.session.cookie_jar.clear()
    r = await client.get("/p/web", headers={"Authorization": "Basic cHJveHk6cHc="})  # nothing else
    assert r.status == 401 and "Bearer" in (await r.json())["error"]["message"]
