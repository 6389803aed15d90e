"""The aiohttp skeleton every service shares.

* ``/healthz`` (the process is alive and none of its background loops is stuck: see
  :mod:`atas.common.heartbeat`), ``/readyz`` (the dependencies this service cannot answer without
  answer, its schema is migrated, and it is not draining), ``/metrics`` (Prometheus);
* a request id per request (``X-Request-ID`` when sent), bound into every log line;
* JSON errors for everything, including aiohttp's own 404/405/413, and 503 + ``Retry-After`` when
  PostgreSQL is unreachable;
* resources as ``cleanup_ctx`` entries (acquire, ``yield``, release: torn down in reverse order);
* a designed shutdown: on SIGTERM readiness goes 503, the listener closes, in-flight requests get
  ``drain_seconds`` to finish, then resources close.
"""

from __future__ import annotations

import asyncio
import gc
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
from aiohttp import web

from . import cors, metrics
from .config import Settings
from .db import UNAVAILABLE_ERRORS
from .errors import ApiError, json_error
from .heartbeat import Heartbeat
from .logging import get_logger, request_id_var

log = get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]

SETTINGS = web.AppKey("atas_settings", Settings)
SERVICE = web.AppKey("atas_service", str)
READINESS_CHECKS = web.AppKey("atas_readiness_checks", dict)
DRAINING = web.AppKey("atas_draining", asyncio.Event)
OPENAPI = web.AppKey("atas_openapi", dict)
HEARTBEATS = web.AppKey("atas_heartbeats", dict)  # loop name -> Heartbeat
MAX_REQUEST_LINE = 64 * 1024

_RID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_encoder = msgspec.json.Encoder()
DB_RETRY_AFTER_S = 5
READINESS_TIMEOUT_S = 2.0


def _route_label(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def request_middleware(request: web.Request, handler):
    """Request id, access log, metrics and JSON errors, in one place so their order is obvious."""
    sent = request.headers.get("X-Request-ID", "")
    rid = sent if _RID_RE.match(sent) else uuid.uuid4().hex
    token = request_id_var.set(rid)
    service = request.app[SERVICE]
    started = time.perf_counter()
    metrics.HTTP_IN_FLIGHT.labels(service).inc()
    status = 499  # client went away before a response was produced
    response: web.StreamResponse
    try:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = exc.to_response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = exc.reason.lower().replace(" ", "_")
            message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
            if isinstance(exc, web.HTTPRequestEntityTooLarge):
                message = "request body is too large"
            response = json_error(exc.status, code, message,
                                  headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"})
        except asyncpg.QueryCanceledError as exc:
            # A statement timeout (or an operator's cancel): the request costs too much, retrying
            # it as is would cost the same. Not "unavailable", which invites a retry.
            log.warning("statement cancelled", error=f"{type(exc).__name__}: {exc}", path=request.path)
            response = json_error(504, "statement_timeout",
                                  "the database did not finish this request in time (DB_STATEMENT_TIMEOUT_MS); "
                                  "narrow it: a shorter date range, a smaller batch or report")
        except UNAVAILABLE_ERRORS as exc:
            log.warning("dependency unavailable", error=f"{type(exc).__name__}: {exc}", path=request.path)
            response = json_error(503, "unavailable", "the database is unavailable; retry later",
                                  headers={"Retry-After": str(DB_RETRY_AFTER_S)})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error", path=request.path, method=request.method)
            response = json_error(500, "internal_error",
                                  f"internal error; quote request id {rid} when reporting it")
        status = response.status
        if not response.prepared:
            response.headers.setdefault("X-Request-ID", rid)
        return response
    finally:
        elapsed = time.perf_counter() - started
        metrics.HTTP_IN_FLIGHT.labels(service).dec()
        route = _route_label(request)
        metrics.HTTP_REQUESTS.labels(service, route, request.method, str(status)).inc()
        metrics.HTTP_LATENCY.labels(service, route).observe(elapsed)
        if route not in ("/healthz", "/readyz", "/metrics"):
            log.info("request", method=request.method, path=request.path, route=route, status=status,
                     ms=round(elapsed * 1000, 2))
        request_id_var.reset(token)


async def _healthz(request: web.Request) -> web.Response:
    """Alive unless a background loop is stuck: 503 naming it, so the liveness probe restarts
    the pod (a stuck relay or bridge would otherwise leave it "healthy" while events stop)."""
    now = time.monotonic()
    beats: dict[str, Heartbeat] = request.app[HEARTBEATS]
    loops = {name: round(hb.silent_for(now), 1) for name, hb in beats.items()}
    stuck = sorted(name for name, hb in beats.items() if hb.stalled(now))
    body = {"status": "stuck" if stuck else "ok", "service": request.app[SERVICE], "loops": loops}
    if stuck:
        body["stuck"] = stuck
        log.error("background loop stuck; failing /healthz", loops=stuck,
                  bound_s=request.app[SETTINGS].loop_stall_s)
    return web.json_response(body, status=503 if stuck else 200)


async def _run_check(check: ReadinessCheck) -> str:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_S):
            await check()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the point is to report any failure
        return f"error: {type(exc).__name__}: {exc}"[:300]


async def _readyz(request: web.Request) -> web.Response:
    app = request.app
    if app[DRAINING].is_set():
        metrics.READY.labels(app[SERVICE]).set(0)
        return web.Response(status=503, content_type="application/json",
                            body=_encoder.encode({"status": "draining", "checks": {}}))
    checks = app[READINESS_CHECKS]
    names = list(checks)
    outcomes = await asyncio.gather(*(_run_check(checks[n]) for n in names))
    result = dict(zip(names, outcomes))
    ok = all(v == "ok" for v in outcomes)
    metrics.READY.labels(app[SERVICE]).set(1 if ok else 0)
    return web.Response(status=200 if ok else 503, content_type="application/json",
                        body=_encoder.encode({"status": "ready" if ok else "unavailable", "checks": result}))


async def _metrics(_request: web.Request) -> web.Response:
    body, ctype = metrics.render()
    return web.Response(body=body, headers={"Content-Type": ctype})


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=_encoder.encode(request.app[OPENAPI]), content_type="application/json")


def add_openapi(app: web.Application, fragment: dict) -> None:
    """Merge a service's OpenAPI fragment (``paths`` and ``components``) into ``/openapi.json``.

    Each service describes its own routes; ``atas dev``, which serves all three from one process,
    gets one document with everything.
    """
    doc = app[OPENAPI]
    for path, ops in fragment.get("paths", {}).items():
        doc["paths"].setdefault(path, {}).update(ops)
    for kind, items in fragment.get("components", {}).items():
        doc["components"].setdefault(kind, {}).update(items)
    for tag in fragment.get("tags", []):
        if tag not in doc["tags"]:
            doc["tags"].append(tag)


def create_app(settings: Settings, service: str, *, client_max_size: int = 1024 ** 2) -> web.Application:
    """An application with the shared middleware and the health, readiness and metrics routes."""
    app = web.Application(middlewares=[request_middleware], client_max_size=client_max_size)
    app[SETTINGS] = settings
    app[SERVICE] = service
    app[READINESS_CHECKS] = {}
    app[DRAINING] = asyncio.Event()
    app[HEARTBEATS] = {}
    app[OPENAPI] = {
        "openapi": "3.1.0",
        "info": {"title": f"ATAS {service}", "version": "1"},
        "servers": [{"url": "/"}],
        "tags": [],
        "paths": {},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "security": [{"bearer": []}],
    }
    cors.install(app, settings.cors_origins)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


def add_readiness_check(app: web.Application, name: str, check: ReadinessCheck) -> None:
    app[READINESS_CHECKS][name] = check


def add_heartbeat(app: web.Application, name: str) -> Heartbeat:
    """A heartbeat ``/healthz`` watches, for the loop ``name`` (start it when the loop starts)."""
    heartbeat = Heartbeat(name, app[SETTINGS].loop_stall_s)
    app[HEARTBEATS][name] = heartbeat
    return heartbeat


def drop_heartbeat(app: web.Application, heartbeat: Heartbeat) -> None:
    """The loop stopped on purpose (shutdown): no longer watched."""
    if app[HEARTBEATS].get(heartbeat.name) is heartbeat:
        del app[HEARTBEATS][heartbeat.name]


async def serve(app: web.Application, *, host: str = "0.0.0.0", port: int = 8080,
                drain_seconds: float = 20.0, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run ``app`` until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully."""
    # Request lines up to 64 KiB (aiohttp's default is 8 KiB): parameters the API accepts (a 4,096-
    # character build_url and 1,024-character labels, percent-encoded) must reach the handlers,
    # which answer JSON; aiohttp's own refusal of a longer line is plain text no client expects.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=drain_seconds,
                           max_line_size=MAX_REQUEST_LINE, max_field_size=MAX_REQUEST_LINE)
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        # What start-up made (modules, the app, pools, clients) lives as long as the process: take
        # it out of the cyclic GC's full collections, whose pause grows with every object they
        # traverse (the stream service: ~65,000 objects, ~60 ms less per full collection on a
        # 2-core VM). Objects are still freed by reference counting.
        gc.collect()
        gc.freeze()
        log.info("listening", service=app[SERVICE], host=host, port=port, gc_frozen=gc.get_freeze_count())
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: readiness off, draining in-flight requests",
                 service=app[SERVICE], drain_seconds=drain_seconds)
        app[DRAINING].set()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        gc.unfreeze()  # what start-up made may now become garbage (and serve() may run again)
        started = time.perf_counter()
        await runner.cleanup()
        log.info("stopped", service=app[SERVICE], ms=round((time.perf_counter() - started) * 1000, 1))
