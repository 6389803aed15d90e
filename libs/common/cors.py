"""CORS for dashboards served from another origin (``CORS_ALLOWED_ORIGINS``; default: none).

Off unless origins are configured: the reference dashboard is served by the query service itself
and needs none. An allowed origin may call every endpoint with a Bearer token (never cookies: no
``Access-Control-Allow-Credentials``, the session cookie stays SameSite=Strict and same-origin).
The headers are added in ``on_response_prepare`` so that streamed answers (SSE, whose headers go
out before the handler returns) carry them as well; preflights are answered before routing.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, If-None-Match, Last-Event-ID, X-Request-ID"
# What a script on another origin may read from answers: paging, caching, retry and tracing.
EXPOSED_HEADERS = "ETag, Link, Location, Retry-After, X-Cache, X-Request-ID"
PREFLIGHT_MAX_AGE_S = "600"

CORS_ORIGINS = web.AppKey("atas_cors_origins", frozenset)


def parse_origins(raw: str | None) -> tuple[tuple[str, ...], list[str]]:
    """(origins, problems) from a comma-separated list such as ``https://dash.example.com``, or ``*``."""
    origins: list[str] = []
    problems: list[str] = []
    for item in (raw or "").split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        if origin == "*":
            origins.append(origin)
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            problems.append(f"CORS_ALLOWED_ORIGINS: {item.strip()!r} is not an origin such as "
                            "https://dash.example.com (scheme, host and optional port; no path)")
            continue
        origins.append(origin.lower())
    return tuple(origins), problems


def _allowed(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    allowed = request.app.get(CORS_ORIGINS)
    if not origin or not allowed:
        return None
    return origin if ("*" in allowed or origin.lower() in allowed) else None


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = _allowed(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary and "Origin" not in vary else (vary or "Origin")


@web.middleware
async def preflight_middleware(request: web.Request, handler):
    if (request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
            and _allowed(request) is not None):
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE_S,
        })
    return await handler(request)


def install(app: web.Application, origins: tuple[str, ...]) -> None:
    """Allow ``origins`` (nothing happens for an empty tuple)."""
    if not origins:
        return
    app[CORS_ORIGINS] = frozenset(origins)
    app.middlewares.insert(0, preflight_middleware)
    app.on_response_prepare.append(_add_headers)
