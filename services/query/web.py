"""The reference web dashboard: static files under ``web/`` and the browser sign-in.

The pages use the public API only (``/v1/...`` of query, ``/v1/stream``); this module serves files
and turns a token into the ``atas_token`` cookie the APIs already accept. No build step: the files
are served as they are in the repository, gzip-compressed once at start.

* ``/`` and ``/p/{project}/...`` answer ``index.html`` (the pages route in the browser), never cached.
* ``/assets/{version}/...``: ``version`` is a digest of every asset, so a deploy changes every URL
  and the files can be cached for a year (``immutable``). Relative imports between the modules stay
  under one version, so no import map (an inline script) is needed.
* ``GET /signin/link/{code}``: the one-time link ``atas dev`` prints; sets the cookie and is spent.
* ``POST /signin`` (form field ``token``): the production sign-in page; ``POST /signout``.
* ``GET /session``: the cookie's subject, projects and expiry, for the page header.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from atas.common.app import SETTINGS
from atas.common.auth import COOKIE_NAME, mint_token, verify_token
from atas.common.errors import ApiError

WEB_DIR = Path(__file__).parent / "web"
ASSETS = WEB_DIR / "assets"

# No inline script or style anywhere; images and media only from this origin (attachments are
# downloaded through the API) or blob:/data: URLs made by the page itself.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob:; connect-src 'self'; font-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}
IMMUTABLE = "public, max-age=31536000, immutable"
# A one-time link is meant to be clicked right after `atas dev` prints it.
LINK_TTL_S = 15 * 60
# Cookie tokens minted for a link live this long (a dev session); sign-in with a token keeps its exp.
LINK_SESSION_TTL_S = 7 * 24 * 3600
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
         ".json": "application/json", ".png": "image/png", ".ico": "image/x-icon"}


@dataclass
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str


@dataclass
class WebState:
    version: str
    assets: dict[str, Asset]
    index: bytes
    links: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # code -> (token, project, until)


WEB = web.AppKey("atas_query_web", WebState)


def load_assets(root: Path = ASSETS) -> tuple[str, dict[str, Asset]]:
    """Every file under ``root`` with its gzip form, and the digest of them all (the URL version)."""
    digest = hashlib.sha256()
    assets: dict[str, Asset] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        body = path.read_bytes()
        digest.update(rel.encode() + b"\0" + body)
        ctype = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        squeezed = gzip.compress(body, 9, mtime=0) if ctype.startswith(("text/", "application/json", "image/svg")) else None
        assets[rel] = Asset(body, squeezed if squeezed and len(squeezed) < len(body) else None, ctype)
    return digest.hexdigest()[:16], assets


def _html(body: bytes, status: int = 200) -> web.Response:
    resp = web.Response(body=body, status=status, content_type="text/html", charset="utf-8")
    resp.headers.update(HEADERS)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


async def index(request: web.Request) -> web.Response:
    return _html(request.app[WEB].index)


async def asset(request: web.Request) -> web.StreamResponse:
    state = request.app[WEB]
    found = state.assets.get(request.match_info["path"])
    if found is None:
        raise ApiError(404, "not_found", f"no asset {request.match_info['path']!r}")
    resp = web.Response(body=found.body, content_type=found.content_type)
    if found.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        resp.body = found.gzipped
        resp.headers["Content-Encoding"] = "gzip"
    resp.headers["Vary"] = "Accept-Encoding"
    resp.headers.update(HEADERS)
    # An old version's URL (a page loaded before a deploy) gets today's file, but not for a year.
    resp.headers["Cache-Control"] = IMMUTABLE if request.match_info["version"] == state.version else "no-cache"
    return resp


def issue_signin_link(app: web.Application, project: str, *, now: float | None = None) -> str:
    """A one-time path (``/signin/link/<code>``) that signs a browser in to ``project``.

    The code is random and kept in this process only: the link works once, on the server that
    printed it (``atas dev``). The token behind it reads only (``query:read`` + ``stream:read``).
    """
    now = time.time() if now is None else now
    token = mint_token(app[SETTINGS].jwt_secret, subject="atas-dev-dashboard", scopes=("query:read", "stream:read"),
                       projects=(project,), ttl_seconds=LINK_SESSION_TTL_S, now=now)
    code = secrets.token_urlsafe(24)
    state = app[WEB]
    state.links = {c: v for c, v in state.links.items() if v[2] > now}  # drop expired ones
    state.links[code] = (token, project, now + LINK_TTL_S)
    return f"/signin/link/{code}"


def _set_cookie(request: web.Request, resp: web.StreamResponse, token: str, max_age: int) -> None:
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() == "https"
    resp.set_cookie(COOKIE_NAME, token, max_age=max(max_age, 1), path="/", httponly=True, samesite="Strict",
                    secure=secure)


def _message(request: web.Request, title: str, text: str, status: int) -> web.Response:
    version = request.app[WEB].version
    page = (f"<!doctype html><meta charset=utf-8><title>{title} · ATAS</title>"
            f"<link rel=stylesheet href=\"/assets/{version}/style.css\"><main class=message><h1>{title}</h1>"
            f"<p>{text}</p><p><a href=\"/signin\">Sign in with a token</a></p></main>")
    return _html(page.encode(), status)


async def signin_link(request: web.Request) -> web.Response:
    state = request.app[WEB]
    spent = state.links.pop(request.match_info["code"], None)
    if spent is None or spent[2] < time.time():
        return _message(request, "This sign-in link is spent",
                        "A dashboard link works once and for 15 minutes. Restart <code>atas dev</code> for a "
                        "new one, or sign in with a token.", 410)
    token, project, _ = spent
    resp = web.HTTPSeeOther(f"/p/{project}")
    _set_cookie(request, resp, token, LINK_SESSION_TTL_S)
    resp.headers.update(HEADERS)
    raise resp


def _same_origin(request: web.Request) -> bool:
    """A form post from this dashboard (browsers send Origin on POST); refuses login CSRF."""
    if request.headers.get("Sec-Fetch-Site") in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("X-Forwarded-Host") or request.host
    return origin.split("://", 1)[-1] == host


async def signin(request: web.Request) -> web.Response:
    if not _same_origin(request):
        raise ApiError(403, "forbidden", "sign-in must be posted from the dashboard's own origin")
    form = await request.post()
    token = str(form.get("token", "")).strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    try:
        principal = verify_token(request.app[SETTINGS].jwt_secret, token)
    except ApiError as exc:
        raise web.HTTPSeeOther("/signin?error=" + _q(exc.message)) from None
    if "query:read" not in principal.scopes:
        raise web.HTTPSeeOther("/signin?error=" + _q("this token lacks the query:read scope"))
    projects = sorted(p for p in principal.projects if p != "*")
    resp = web.HTTPSeeOther(f"/p/{projects[0]}" if len(projects) == 1 else "/")
    _set_cookie(request, resp, token, int((principal.expires_at or time.time() + 3600) - time.time()))
    raise resp


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


async def signout(request: web.Request) -> web.Response:
    if not _same_origin(request):
        raise ApiError(403, "forbidden", "sign-out must be posted from the dashboard's own origin")
    resp = web.HTTPSeeOther("/signin")
    resp.del_cookie(COOKIE_NAME, path="/")
    raise resp


async def session(request: web.Request) -> web.Response:
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        raise ApiError(401, "unauthorized", "not signed in")
    principal = verify_token(request.app[SETTINGS].jwt_secret, token)
    resp = web.json_response({"subject": principal.subject, "projects": sorted(principal.projects),
                              "scopes": sorted(principal.scopes), "expires_at": principal.expires_at})
    resp.headers["Cache-Control"] = "no-store"
    return resp


def setup_web(app: web.Application) -> None:
    """Serve the dashboard on ``app`` (GET routes outside ``/v1``, plus the sign-in posts)."""
    version, assets = load_assets()
    page = (WEB_DIR / "index.html").read_text().replace("{{version}}", version).encode()
    app[WEB] = WebState(version=version, assets=assets, index=page)
    for path in ("/", "/signin", "/p/{project}", "/p/{project}/{tail:.*}"):
        app.router.add_get(path, index, allow_head=False)
    app.router.add_get("/assets/{version}/{path:.+}", asset, allow_head=False)
    app.router.add_get("/signin/link/{code}", signin_link, allow_head=False)
    app.router.add_post("/signin", signin)
    app.router.add_post("/signout", signout)
    app.router.add_get("/session", session, allow_head=False)
