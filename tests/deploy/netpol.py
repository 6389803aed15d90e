"""Kubernetes NetworkPolicy semantics, to evaluate intended flows against rendered policies.

A connection is allowed when the source's egress and the destination's ingress both allow it. A
pod selected by no policy of a direction is open in that direction; once one policy of a
direction selects it, only what some rule of those policies allows gets through (rules are
unions). Peers: ``podSelector`` alone means pods of the policy's namespace; ``namespaceSelector``
(with or without ``podSelector``) means pods in the selected namespaces; ``ipBlock`` matches
addresses (also pod addresses: on EKS's VPC CNI pods have VPC addresses, which is the point of
testing ALB rules with them). Only TCP/UDP numeric ports are used here; a named port is an error.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace and labels, maybe an address) or an address outside the cluster."""

    namespace: str | None = None
    labels: dict = field(default_factory=dict)
    ip: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def pod(namespace: str, ip: str | None = None, **labels: str) -> Endpoint:
    return Endpoint(namespace, labels, ip)


def address(ip: str) -> Endpoint:
    return Endpoint(None, {}, ip)


def namespace_labels(name: str) -> dict:
    # Every namespace carries its name as a label since Kubernetes 1.22.
    return {"kubernetes.io/metadata.name": name}


def selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict, policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if not other.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels(other.namespace)):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _port_matches(rule: dict, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        assert isinstance(p.get("port", 0), int), f"named port {p['port']}: not supported here"
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p or p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def _direction_allows(policies: list[dict], subject: Endpoint, other: Endpoint, port: int, protocol: str,
                      direction: str) -> bool:
    kind, peers_key = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    governing = [p for p in policies if p["metadata"]["namespace"] == subject.namespace
                 and kind in p["spec"].get("policyTypes", ["Ingress"])
                 and selects(p["spec"]["podSelector"], subject.labels)]
    if not governing:
        return True
    for policy in governing:
        for rule in policy["spec"].get(direction, []):
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers)) \
                    and _port_matches(rule, port, protocol):
                return True
    return False


def allowed(docs: list[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether the rendered NetworkPolicies let ``src`` open a connection to ``dst:port``."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    egress = not src.is_pod or _direction_allows(policies, src, dst, port, protocol, "egress")
    ingress = not dst.is_pod or _direction_allows(policies, dst, src, port, protocol, "ingress")
    return egress and ingress
