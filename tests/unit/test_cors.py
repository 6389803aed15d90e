"""CORS for dashboards on another origin: off by default, exact origins when configured."""

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from atas.common.app import create_app
from atas.common.config import ConfigError, load_settings
from atas.common.cors import parse_origins
from tests.conftest import make_settings

ORIGIN = "https://dash.example.com"


async def _client(origins: tuple[str, ...]) -> TestClient:
    app = create_app(make_settings(cors_origins=origins), "query")

    async def stream(_request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(_request)
        await resp.write(b": hi\n\n")
        return resp

    app.router.add_get("/v1/stream", stream)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_no_cors_headers_unless_origins_are_configured():
    client = await _client(())
    try:
        resp = await client.get("/healthz", headers={"Origin": ORIGIN})
        assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
        pre = await client.options("/v1/stream", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert "Access-Control-Allow-Origin" not in pre.headers
    finally:
        await client.close()


async def test_an_allowed_origin_gets_headers_on_answers_errors_streams_and_preflights():
    client = await _client((ORIGIN,))
    try:
        pre = await client.options("/v1/stream", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert pre.status == 204 and pre.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
        assert "Access-Control-Allow-Credentials" not in pre.headers
        missing = await client.get("/v1/nothing", headers={"Origin": ORIGIN})
        assert missing.status == 404 and missing.headers["Access-Control-Allow-Origin"] == ORIGIN
        streamed = await client.get("/v1/stream", headers={"Origin": ORIGIN})
        assert streamed.headers["Access-Control-Allow-Origin"] == ORIGIN and "Origin" in streamed.headers["Vary"]
        assert "ETag" in streamed.headers["Access-Control-Expose-Headers"]
        other = await client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        await client.close()


def test_origins_are_parsed_and_bad_ones_named():
    assert parse_origins(" https://A.example.com/ , http://localhost:5173") == (
        ("https://a.example.com", "http://localhost:5173"), [])
    assert parse_origins("") == ((), [])
    with pytest.raises(ConfigError) as info:
        load_settings({"CORS_ALLOWED_ORIGINS": "dash.example.com,https://x.example/path"}, mode="dev")
    assert "CORS_ALLOWED_ORIGINS" in str(info.value) and "dash.example.com" in str(info.value)
