"""deploy/k8s routing: the Ingresses send every API route to the service that serves it, keep SSE
streams open and unbuffered (NGINX and ALB), and accept the bodies ingest accepts."""

from __future__ import annotations

import re

import pytest

from .conftest import SERVICES, find, one

pytestmark = pytest.mark.deploy


def _annotations(ingress: dict) -> dict:
    return ingress["metadata"].get("annotations", {})


def _routes(docs: list[dict]) -> dict[tuple[str, str], str]:
    """(host, path) -> Service name."""
    out = {}
    for ingress in find(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                out[(rule["host"], path["path"])] = path["backend"]["service"]["name"]
    return out


def _route_for(routes: dict, host: str, path: str) -> str | None:
    """Longest-prefix match, as NGINX and ALB do for Prefix paths."""
    best = None
    for (h, prefix), service in routes.items():
        if h == host and (path == prefix or path.startswith(prefix.rstrip("/") + "/")):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, service)
    return best and best[1]


def _service_routes(svc: str) -> set[tuple[str, str]]:
    """(method, path) of every route a service registers, from its real aiohttp app."""
    import importlib

    from aiohttp import web

    from atas.common.app import create_app
    from atas.common.config import load_settings
    from atas.common.engines import install_engines

    settings = load_settings({"DB_URL": "postgresql://h:5432/db", "JWT_SECRET": "x" * 32,
                              "KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    app = create_app(settings, svc)
    install_engines(app, application_name=svc)
    importlib.import_module(f"atas.{svc}.app").setup(app)
    base_routes = {"/healthz", "/readyz", "/metrics", "/openapi.json"}
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method not in ("HEAD", "OPTIONS") and path not in base_routes:
            routes.add((route.method, path))
    assert isinstance(app, web.Application)
    return routes


@pytest.mark.parametrize("variant", ["base", "overlays/production"])
def test_ingress_sends_every_api_route_to_the_service_that_serves_it(variants, variant):
    docs = variants[variant]
    routes = _routes(docs)
    ingest_host = one(docs, "Ingress", "atas-ingest")["spec"]["rules"][0]["host"]
    read_host = one(docs, "Ingress", "atas-query")["spec"]["rules"][0]["host"]
    assert ingest_host != read_host
    for svc in SERVICES:
        host = ingest_host if svc == "ingest" else read_host
        served = _service_routes(svc)
        assert served, f"{svc} registers no routes"
        for method, path in served:
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            assert _route_for(routes, host, concrete) == f"atas-{svc}", f"{method} {path} of {svc}"


def test_ingress_keeps_sse_streams_alive_and_unbuffered(variants, configmap):
    heartbeat = float(configmap["STREAM_HEARTBEAT_SECONDS"])
    stream = _annotations(one(variants["base"], "Ingress", "atas-stream"))
    assert stream["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(stream[f"nginx.ingress.kubernetes.io/{key}"]) >= 4 * heartbeat, key
    # Only the stream route is unbuffered: the others keep NGINX's protective buffering.
    for name in ("atas-ingest", "atas-query"):
        assert "nginx.ingress.kubernetes.io/proxy-buffering" not in _annotations(
            one(variants["base"], "Ingress", name))
    alb = variants["base+alb"]
    order = {i["metadata"]["name"]: int(_annotations(i).get("alb.ingress.kubernetes.io/group.order", "0"))
             for i in find(alb, "Ingress")}
    assert order["atas-stream"] < order["atas-query"], "ALB must match /v1/stream before query's /v1 prefix"
    for ingress in find(alb, "Ingress"):
        attrs = _annotations(ingress)["alb.ingress.kubernetes.io/load-balancer-attributes"]
        idle = int(re.search(r"idle_timeout\.timeout_seconds=(\d+)", attrs).group(1))
        assert idle >= 4 * heartbeat
        assert ingress["spec"]["ingressClassName"] == "alb"
        assert _annotations(ingress)["alb.ingress.kubernetes.io/group.name"] == "atas"


def test_ingress_accepts_bodies_as_large_as_ingest_does(base, configmap):
    size = _annotations(one(base, "Ingress", "atas-ingest"))["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()
    limit = int(number) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit]
    assert limit >= int(configmap["INGEST_MAX_BODY_BYTES"])
