"""deploy/k8s network policy: the flows the system needs are allowed and the rest is denied, on
every overlay, evaluated on the rendered policies (netpol.py implements the NetworkPolicy rules)."""

from __future__ import annotations

import pytest

from .conftest import SERVICES, find, one
from .manifests import pod_template
from .netpol import Endpoint, address, allowed, pod
from .test_k8s import VARIANTS

pytestmark = pytest.mark.deploy

IN_CLUSTER = [v for v in VARIANTS if v not in ("base+managed-datastores", "overlays/production")]
MANAGED = ["base+managed-datastores", "overlays/production"]
ALB = ["base+alb", "overlays/production"]

NGINX = pod("ingress-nginx", **{"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS = pod("monitoring", **{"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = pod("kube-system", **{"k8s-app": "kube-dns"})
STRANGER = pod("default", ip="10.0.100.7", app="someone-else")  # another team's pod, VPC address
INTRUDER = pod("atas", app="debug")  # a pod started by hand in the namespace
MANAGED_DB = address("10.0.64.10")  # in the managed-datastores component's example range
INTERNET = address("203.0.113.9")
METADATA = address("169.254.169.254")

# Who needs which datastore (DESIGN.md): stream never uses PostgreSQL.
NEEDS = {
    "atas-ingest": {5432, 6379, 9092}, "atas-query": {5432, 6379, 9092}, "atas-stream": {6379, 9092},
    "atas-migrate": {5432}, "atas-retention": {5432}, "atas-kafka-topics": {9092},
}
STORE_OF_PORT = {5432: "atas-postgres", 6379: "atas-redis", 9092: "atas-kafka"}
# Who talks to object storage (attachments, DESIGN.md): over HTTPS, at public addresses.
OBJECT_STORAGE = {"atas-ingest", "atas-query", "atas-retention"}


def workload(docs: list[dict], name: str) -> Endpoint:
    """The pod a rendered workload creates: its namespace and template labels."""
    (doc,) = [d for d in docs if d["metadata"]["name"] == name and pod_template(d) is not None]
    return pod(doc["metadata"]["namespace"], **pod_template(doc)["metadata"]["labels"])


def every_pod(docs: list[dict]) -> dict[str, Endpoint]:
    return {d["metadata"]["name"]: workload(docs, d["metadata"]["name"]) for d in docs if pod_template(d)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_is_denied_by_default_both_ways(variants, variant):
    deny = one(variants[variant], "NetworkPolicy", "atas-default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    docs = variants[variant]
    for name, p in every_pod(docs).items():
        assert not allowed(docs, p, INTERNET, 80), f"{name} reaches the internet"
        assert allowed(docs, p, INTERNET, 443) == (name in OBJECT_STORAGE), f"{name}: HTTPS to object storage"
        assert not allowed(docs, p, METADATA, 443) and not allowed(docs, p, address("169.254.170.23"), 80), \
            f"{name} reaches a link-local credentials endpoint"
        assert not allowed(docs, STRANGER, p, 8080), f"another namespace reaches {name}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_resolves_names_on_eks_aks_gke_and_nodelocal_dns(variants, variant):
    docs = variants[variant]
    for name, p in every_pod(docs).items():
        for proto in ("UDP", "TCP"):
            assert allowed(docs, p, KUBE_DNS, 53, proto), f"{name}: kube-dns/CoreDNS {proto}"
            assert allowed(docs, p, address("169.254.20.10"), 53, proto), f"{name}: NodeLocal DNSCache"
            assert allowed(docs, p, METADATA, 53, proto), f"{name}: GKE Cloud DNS"
        # The metadata server's HTTP side hands out node credentials: never.
        assert not allowed(docs, p, METADATA, 80), name
        assert not allowed(docs, p, address("8.8.8.8"), 53, "UDP"), f"{name}: DNS only from the cluster's resolvers"


@pytest.mark.parametrize("variant", VARIANTS)
def test_ingress_controller_and_prometheus_reach_the_services_only(variants, variant, configmap):
    docs = variants[variant]
    port = int(configmap["PORT"])
    pods = every_pod(docs)
    for svc in SERVICES:
        target = pods[f"atas-{svc}"]
        assert allowed(docs, PROMETHEUS, target, port), f"Prometheus can't scrape {svc}"
        if variant not in ALB:
            assert allowed(docs, NGINX, target, port), f"NGINX can't reach {svc}"
        assert not allowed(docs, NGINX, target, port + 1)
        assert not allowed(docs, INTRUDER, target, port) and not allowed(docs, STRANGER, target, port)
    for name, p in pods.items():
        if name not in {f"atas-{s}" for s in SERVICES}:
            assert not allowed(docs, NGINX, p, port) and not allowed(docs, PROMETHEUS, p, port), name


@pytest.mark.parametrize("variant", ALB)
def test_alb_reaches_the_services_but_the_rest_of_the_vpc_does_not(variants, variant, configmap):
    docs = variants[variant]
    port = int(configmap["PORT"])
    blocks = [p["ipBlock"]["cidr"] for p in one(docs, "NetworkPolicy", "atas-services")["spec"]["ingress"][0]["from"]
              if "ipBlock" in p]
    assert blocks and all(int(b.split("/")[1]) >= 20 for b in blocks), "the ALB's subnets, not the VPC"
    alb_node = address(blocks[0].split("/")[0][:-1] + "10")
    for svc in SERVICES:
        target = workload(docs, f"atas-{svc}")
        assert allowed(docs, alb_node, target, port), svc
        # On EKS a pod of any namespace has a VPC address; it must not pass as the ALB.
        assert not allowed(docs, STRANGER, target, port), svc


@pytest.mark.parametrize("variant", IN_CLUSTER)
def test_each_role_reaches_exactly_the_in_cluster_datastores_it_uses(variants, variant):
    docs = variants[variant]
    pods = every_pod(docs)
    for role, needs in NEEDS.items():
        for port, store in STORE_OF_PORT.items():
            assert allowed(docs, pods[role], pods[store], port) == (port in needs), f"{role} -> {store}:{port}"
        # Not the datastores' other ports, and not a datastore elsewhere.
        assert not allowed(docs, pods[role], pods["atas-kafka"], 9093), f"{role} -> the KRaft controller port"
        for port in needs:
            assert not allowed(docs, pods[role], INTERNET, port), f"{role} -> any address:{port}"
    for store in STORE_OF_PORT.values():
        for port in STORE_OF_PORT:
            assert not allowed(docs, INTRUDER, pods[store], port) and not allowed(docs, STRANGER, pods[store], port)


@pytest.mark.parametrize("variant", IN_CLUSTER)
def test_kafka_brokers_replicate_and_form_a_quorum_and_nothing_else(variants, variant):
    docs = variants[variant]
    broker = workload(docs, "atas-kafka")
    for port in (9092, 9093):
        assert allowed(docs, broker, broker, port), f"broker -> broker :{port}"
    assert not allowed(docs, broker, workload(docs, "atas-postgres"), 5432)
    for store in STORE_OF_PORT.values():
        assert not allowed(docs, workload(docs, store), INTERNET, 443), f"{store} egress is open"
        assert not allowed(docs, workload(docs, store), address("10.1.2.3"), 9092), f"{store} egress is open"


@pytest.mark.parametrize("variant", MANAGED)
def test_with_managed_datastores_roles_reach_their_subnets_only(variants, variant):
    docs = variants[variant]
    assert not find(docs, "NetworkPolicy", "atas-postgres") and not find(docs, "NetworkPolicy", "atas-kafka")
    for role, needs in NEEDS.items():
        p = workload(docs, role)
        for port in needs:
            assert allowed(docs, p, MANAGED_DB, port), f"{role} -> managed :{port}"
            assert not allowed(docs, p, INTERNET, port), f"{role} -> any address :{port}"
        assert not allowed(docs, p, MANAGED_DB, 22), role


def test_the_evaluator_implements_the_policy_rules_it_relies_on():
    """netpol.allowed on small policies whose answers the Kubernetes documentation gives."""
    def policy(spec: dict, ns: str = "a") -> dict:
        return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": ns}, "spec": spec}

    web, db = pod("a", app="web"), pod("a", app="db")
    assert allowed([], web, db, 1)  # no policy: open
    deny_in = policy({"podSelector": {}, "policyTypes": ["Ingress"]})
    assert not allowed([deny_in], web, db, 1) and allowed([deny_in], web, INTERNET, 1)  # egress still open
    allow_web = policy({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                     "ports": [{"port": 5432}]}]})
    assert allowed([deny_in, allow_web], web, db, 5432)
    assert not allowed([deny_in, allow_web], web, db, 5433)
    assert not allowed([deny_in, allow_web], pod("b", app="web"), db, 5432)  # podSelector: own namespace only
    assert not allowed([deny_in, allow_web], web, db, 5432, "UDP")
    by_ns = policy({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}},
         "podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["x"]}]}}]}]})
    assert allowed([by_ns], pod("b", app="y"), db, 1) and not allowed([by_ns], pod("b", app="x"), db, 1)
    assert not allowed([by_ns], pod("c", app="y"), db, 1)  # both selectors must match
    cidr = policy({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.5.0/24"]}}]}]})
    assert allowed([cidr], web, address("10.0.4.1"), 1) and not allowed([cidr], web, address("10.0.5.1"), 1)
    assert not allowed([cidr], web, db, 1)  # a pod without a known address is no ipBlock peer
