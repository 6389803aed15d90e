"""JWT authentication (HS256, ``JWT_SECRET``) and per-project, per-scope authorisation.

A token carries ``sub``, ``scopes`` (``ingest:write``, ``query:read``, ``stream:read``) and
``projects`` (project keys, or ``"*"`` for all). No or bad token → 401; a valid token without the
scope or the project → 403.

Expiry is one rule for every endpoint (REST and the stream): a token is accepted until
``exp + LEEWAY_S`` seconds. The allowance covers clock skew between the minting machine and the
servers, nothing more; :attr:`Principal.expires_at` holds that instant, so every check (the query
service's verified-token memo, the stream's refusal at connect and its end-of-stream timer) uses
the same deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import jwt
import msgspec
from aiohttp import web

from .errors import ApiError

SCOPES = ("ingest:write", "query:read", "stream:read")
ALGORITHM = "HS256"
ISSUER = "atas"
COOKIE_NAME = "atas_token"
# Clock-skew allowance after a token's `exp` (documented in README "Tokens"). Small on purpose: a
# token minted with --ttl 1 must stop working within seconds, on every endpoint alike.
LEEWAY_S = 5


class Principal(msgspec.Struct, frozen=True):
    subject: str
    scopes: frozenset[str]
    projects: frozenset[str]
    expires_at: float | None = None  # epoch seconds after which the token is refused: exp + LEEWAY_S

    def can(self, scope: str, project: str) -> bool:
        return scope in self.scopes and ("*" in self.projects or project in self.projects)


def mint_token(secret: str, *, subject: str, scopes: Iterable[str], projects: Iterable[str],
               ttl_seconds: int = 3600, now: float | None = None) -> str:
    """A signed token that expires after ``ttl_seconds`` (every ATAS token expires: a leaked one
    stops working by itself, and live streams end when it does)."""
    if not isinstance(ttl_seconds, int) or ttl_seconds < 1:
        raise ValueError(f"a token's lifetime must be at least 1 second, not {ttl_seconds!r}; "
                         "for a long-lived CI token use e.g. 31536000 (a year)")
    scopes = sorted(set(scopes))
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"unknown scope(s) {', '.join(bad)}; valid: {', '.join(SCOPES)}")
    projects = sorted(set(projects))
    if not projects:
        raise ValueError("a token needs at least one project (or '*')")
    issued = int(now if now is not None else time.time())
    claims = {"sub": subject, "iss": ISSUER, "iat": issued, "exp": issued + ttl_seconds,
              "scopes": scopes, "projects": projects}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def unauthorized(message: str) -> ApiError:
    """401 with the Bearer challenge, for a missing, invalid or expired token."""
    return ApiError(401, "unauthorized", message,
                    headers={"WWW-Authenticate": 'Bearer realm="atas", error="invalid_token"'})


def verify_token(secret: str, token: str) -> Principal:
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": ["sub", "iat", "exp"]}, leeway=LEEWAY_S)
    except jwt.ExpiredSignatureError:
        raise unauthorized("token has expired; mint a new one") from None
    except jwt.InvalidTokenError as exc:
        raise unauthorized(f"invalid token: {exc}") from None
    scopes, projects = claims.get("scopes"), claims.get("projects")
    if not isinstance(scopes, list) or not isinstance(projects, list):
        raise unauthorized("invalid token: claims 'scopes' and 'projects' must be lists")
    return Principal(subject=str(claims["sub"]), scopes=frozenset(map(str, scopes)),
                     projects=frozenset(map(str, projects)),
                     expires_at=float(claims["exp"]) + LEEWAY_S)


def token_from_request(request: web.Request, *, allow_query: bool = False) -> str | None:
    """The request's token: a Bearer header, else (``allow_query``) the ``access_token`` query
    parameter — chosen for this very request, so it wins over a cookie that may be stale — else the
    cookie. A non-Bearer Authorization header (e.g. Basic added by a proxy) is refused only when
    there is no other token."""
    header = request.headers.get("Authorization")
    if header:
        kind, _, value = header.partition(" ")
        if kind.lower() == "bearer" and value.strip():
            return value.strip()
    token = (request.query.get("access_token") if allow_query else None) or request.cookies.get(COOKIE_NAME)
    if token:
        return token
    if header:
        raise unauthorized("Authorization header must be 'Bearer <token>'")
    return None


def authenticate(request: web.Request, secret: str, *, allow_query: bool = False) -> Principal:
    token = token_from_request(request, allow_query=allow_query)
    if token is None:
        raise unauthorized("authentication required: send 'Authorization: Bearer <token>' "
                            "(mint one with `atas token`)")
    return verify_token(secret, token)


def authorize(principal: Principal, scope: str, project: str) -> None:
    if scope not in principal.scopes:
        raise ApiError(403, "forbidden", f"token lacks scope {scope!r}")
    if "*" not in principal.projects and project not in principal.projects:
        raise ApiError(403, "forbidden", f"token is not valid for project {project!r}")


def require(request: web.Request, secret: str, scope: str, project: str, *,
            allow_query: bool = False) -> Principal:
    """Authenticate the request and check it may use ``scope`` on ``project``."""
    principal = authenticate(request, secret, allow_query=allow_query)
    authorize(principal, scope, project)
    return principal
