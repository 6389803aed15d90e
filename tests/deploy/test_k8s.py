"""deploy/k8s: every way of applying it is valid Kubernetes, and the pieces agree with each other
and with the code (ports, labels, autoscaling targets, drain windows, routes, metric names)."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from .conftest import (
    BASE, COMPONENTS, K8S, OVERLAYS, ROOT, SERVICES, atas_containers, container_env, find, one,
)
from .manifests import MINIMUM_KUBECTL, kubectl_version, load_yaml_docs, pod_containers, pod_spec

pytestmark = pytest.mark.deploy

# The oldest Kubernetes docs/deploy.md supports (1.30: preStop `sleep`, and the podFailurePolicy,
# unhealthyPodEvictionPolicy and matchLabelKeys fields on by default) and the newest the installed
# validator knows (1.37 with kubernetes-validate 1.37): the manifests must be valid on both.
MINIMUM_K8S = "1.30.0"
K8S_VERSIONS = (MINIMUM_K8S, latest_version())
# Custom resources have no schema in kubernetes-validate; they are checked by the tests below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PriorityClass",
                  "CustomResourceDefinition", "IngressClass"}
VARIANTS = ["base", *[f"base+{c.name}" for c in COMPONENTS], *[f"overlays/{o.name}" for o in OVERLAYS]]


# Most objects are the same in every variant: validate each distinct one once per version.
_VALIDATED: dict[tuple[str, str], str | None] = {}


def _schema_error(doc: dict, version: str) -> str | None:
    key = (version, json.dumps(doc, sort_keys=True))
    if key not in _VALIDATED:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            _VALIDATED[key] = None
        except kubernetes_validate.ValidationError as exc:
            _VALIDATED[key] = "/".join(str(p) for p in exc.path) + ": " + exc.message
    return _VALIDATED[key]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_passes_strict_schema_validation(variants, variant, version):
    failures = []
    for doc in variants[variant]:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        error = _schema_error(doc, version)
        if error:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {error}")
    assert not failures, "\n".join(failures)


def test_secret_template_is_valid_and_holds_the_credentials(secret_template):
    kubernetes_validate.validate(secret_template, K8S_VERSIONS[-1], strict=True)
    data = secret_template["stringData"]
    assert set(data) == {"JWT_SECRET", "DB_PASSWORD", "REDIS_PASSWORD", "KAFKA_SASL_PASSWORD"}
    assert data["KAFKA_SASL_PASSWORD"] == ""  # only for a SASL Kafka; the in-cluster one takes none
    text = (BASE / "secrets.yaml").read_text()
    assert "openssl rand -base64 32" in text


def test_a_forgotten_placeholder_secret_stops_the_services(configmap, secret_template):
    """The template's JWT_SECRET is too short on purpose: applying it unchanged must fail loudly."""
    from atas.common.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="JWT_SECRET must be at least 32 bytes"):
        load_settings({**configmap, **secret_template["stringData"]})


def test_custom_resources_are_well_formed(variants):
    monitors = find(variants["base+servicemonitor"], "ServiceMonitor")
    assert len(monitors) == 1
    spec = monitors[0]["spec"]
    services = {s["metadata"]["name"]: s for s in find(variants["base"], "Service")}
    selected = set(spec["selector"]["matchExpressions"][0]["values"])
    assert selected == {f"atas-{s}" for s in SERVICES}
    port_names = {p["port"] for p in spec["endpoints"]}
    for name in selected:
        assert port_names <= {p["name"] for p in services[name]["spec"]["ports"]}
    assert {p["path"] for p in spec["endpoints"]} == {"/metrics"}


def test_every_component_and_overlay_is_exercised():
    """A component nobody renders is a component nobody validated."""
    on_disk = {p.name for p in (K8S / "components").iterdir() if p.is_dir()}
    assert on_disk == {c.name for c in COMPONENTS}
    assert {o.name for o in OVERLAYS} >= {"production", "self-hosted"}


def _pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_selectors_match_exactly_one_workload_and_its_ports(variants, variant):
    docs = variants[variant]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for service in find(docs, "Service"):
        name = service["metadata"]["name"]
        chosen = [w for w in workloads if _selects(service["spec"]["selector"], _pod_labels(w))]
        assert len(chosen) == 1, f"Service {name} selects {[w['metadata']['name'] for w in chosen]}"
        ports = {p["name"]: p["containerPort"] for c in pod_containers(chosen[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), f"Service {name}: no container port {target}"
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        assert _selects(selector, _pod_labels(workload)), f"{workload['metadata']['name']}: selector misses its pods"
        assert selector == {"app": workload["metadata"]["name"]}, "selectors are the app label alone"
    for statefulset in find(docs, "StatefulSet"):
        assert one(docs, "Service", statefulset["spec"]["serviceName"]), "StatefulSet needs its governing Service"


def test_one_file_per_service_with_deployment_service_account_hpa_and_pdb():
    for svc in SERVICES:
        kinds = sorted(d["kind"] for d in load_yaml_docs(BASE / f"{svc}.yaml"))
        assert kinds == sorted(["ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler",
                                "PodDisruptionBudget"]), svc
        assert all(d["metadata"]["name"] == f"atas-{svc}" for d in load_yaml_docs(BASE / f"{svc}.yaml"))


def test_ports_agree_with_PORT_everywhere(base, configmap):
    port = int(configmap["PORT"])
    for svc in SERVICES:
        deployment = one(base, "Deployment", f"atas-{svc}")
        (container,) = pod_containers(deployment)
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in ("http", port)
        service = one(base, "Service", f"atas-{svc}")
        assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
    policy = one(base, "NetworkPolicy", "atas-services")
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [port]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_hpa_targets_an_existing_deployment_with_the_guide_policy(variants, variant):
    docs = variants[variant]
    hpas = find(docs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == {f"atas-{s}" for s in SERVICES}
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        deployment = one(docs, "Deployment", ref["name"])
        assert "replicas" not in deployment["spec"], f"{ref['name']}: the HPA owns replicas"
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
        resources = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]
                     if m["type"] == "Resource"}
        assert resources == {"cpu": {"type": "Utilization", "averageUtilization": 70},
                             "memory": {"type": "Utilization", "averageUtilization": 80}}
        # Utilization is a percentage of requests: without them the HPA can't compute it.
        (container,) = pod_containers(deployment)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    for pdb in find(docs, "PodDisruptionBudget"):
        selected = [w for w in docs if w["kind"] in ("Deployment", "StatefulSet")
                    and _selects(pdb["spec"]["selector"]["matchLabels"], _pod_labels(w))]
        assert len(selected) == 1, f"PDB {pdb['metadata']['name']} selects {len(selected)} workloads"


def test_custom_metric_autoscaling_reads_metrics_the_services_export(variants):
    docs = variants["base+custom-metrics"]
    wanted = {}
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] in ("Pods", "External"):
                body = metric[metric["type"].lower()]
                wanted[hpa["metadata"]["name"]] = (metric["type"], body["metric"]["name"])
    assert wanted == {"atas-stream": ("Pods", "atas_stream_connections"),
                      "atas-ingest": ("External", "atas_outbox_backlog")}
    exported = {
        "atas-stream": (ROOT / "services" / "stream" / "metrics.py").read_text(),
        "atas-ingest": (ROOT / "services" / "ingest" / "metrics.py").read_text(),
    }
    adapter = (K8S / "components" / "custom-metrics" / "prometheus-adapter-values.yaml").read_text()
    for deployment, (_kind, name) in wanted.items():
        assert re.search(rf'Gauge\(\s*"{name}"', exported[deployment]), f"{name} is not a gauge of {deployment}"
        assert f"as: {name}" in adapter, f"the Prometheus Adapter does not serve {name}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_meets_the_restricted_pod_security_profile(variants, variant):
    """The namespace enforces PSA "restricted": a pod that doesn't meet it is never created."""
    for doc in variants[variant]:
        spec = pod_spec(doc)
        if spec is None:
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec.get("enableServiceLinks") is False, name
        for container in pod_containers(doc):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests) and "memory" in limits, name
    namespace = one(variants[variant], "Namespace", "atas")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_atas_containers_run_the_roles_hardened(base, secret_template, configmap):
    from .test_dockerfile import image_user

    secret_keys = set(secret_template["stringData"])
    roles = {}
    for workload, container in atas_containers(base):
        roles[workload["metadata"]["name"]] = container["args"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod_spec(workload)["securityContext"]["runAsUser"] == image_user()
        env = container_env(container, configmap, secret_keys)
        assert {"DB_URL", "JWT_SECRET", "KAFKA_BOOTSTRAP_SERVERS"} <= set(env)
        # Python needs a writable temp dir even with a read-only root filesystem.
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    assert roles == {**{f"atas-{s}": ["serve", s] for s in SERVICES}, "atas-migrate": ["migrate"],
                     "atas-kafka-topics": ["topic", "--partitions", "12", "--wait", "300"],
                     "atas-retention": ["retention"]}
    for svc in SERVICES:
        (container,) = pod_containers(one(base, "Deployment", f"atas-{svc}"))
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert one(base, "ServiceAccount", f"atas-{svc}")["automountServiceAccountToken"] is False


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_atas_image_and_tag_everywhere(variants, variant):
    from .conftest import project_version

    images = {c["image"] for _w, c in atas_containers(variants[variant])}
    assert len(images) == 1, images
    assert images.pop().endswith(":" + project_version()), "the image tag is the release in pyproject.toml"


def test_network_policy_ports_are_the_datastores_service_ports(base, configmap):
    """test_k8s_network.py evaluates the flows; here the ports they assume are the real ones."""
    datastore_ports = {p["port"] for name in ("atas-postgres", "atas-redis", "atas-kafka")
                       for p in one(base, "Service", name)["spec"]["ports"]}
    assert datastore_ports == {5432, 6379, 9092}
    egress = one(base, "NetworkPolicy", "atas-clients")["spec"]["egress"]
    assert {p["port"] for rule in egress for p in rule["ports"]} == datastore_ports
    for key, port in (("REDIS_PORT", 6379), ("KAFKA_BOOTSTRAP_SERVERS", 9092)):
        assert configmap[key].endswith(str(port))
    assert ":5432/" in configmap["DB_URL"]
    headless = {p["name"]: p["port"] for p in one(base, "Service", "atas-kafka-headless")["spec"]["ports"]}
    assert headless == {"broker": 9092, "controller": 9093}


def _kafka_env(docs: list[dict]) -> dict[str, str]:
    (container,) = pod_containers(one(docs, "StatefulSet", "atas-kafka"))
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.mark.parametrize("variant,brokers", [("base", 1), ("base+kafka-ha", 3), ("overlays/self-hosted", 3)])
def test_kafka_quorum_and_replication_match_the_broker_count(variants, variant, brokers):
    docs = variants[variant]
    kafka = one(docs, "StatefulSet", "atas-kafka")
    env = _kafka_env(docs)
    assert kafka["spec"]["replicas"] == brokers
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert [v.split("@")[0] for v in voters] == [str(i) for i in range(brokers)]
    assert all(f"atas-kafka-{i}.{kafka['spec']['serviceName']}:9093" in voters[i] for i in range(brokers))
    rf = int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"])
    assert rf == brokers and int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == brokers
    assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == (2 if brokers >= 3 else 1)
    assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    if brokers >= 3:
        assert one(docs, "PodDisruptionBudget", "atas-kafka")["spec"]["maxUnavailable"] == 1


def test_managed_datastores_leave_no_in_cluster_datastore_behind(variants):
    docs = variants["base+managed-datastores"]
    names = {d["metadata"]["name"] for d in docs}
    assert not names & {"atas-postgres", "atas-redis", "atas-kafka", "atas-kafka-headless", "atas-datastores"}
    # What remains still runs everything ATAS needs.
    assert {"atas-ingest", "atas-query", "atas-stream", "atas-migrate", "atas-kafka-topics"} <= names


def test_jobs_migrate_and_create_the_topic_from_the_same_configuration(base, configmap):
    migrate = one(base, "Job", "atas-migrate")
    (container,) = pod_containers(migrate)
    assert container["args"] == ["migrate"]
    assert {list(s)[0] for s in container["envFrom"]} == {"configMapRef", "secretRef"}
    topics = one(base, "Job", "atas-kafka-topics")
    (topic_container,) = pod_containers(topics)
    # The topic Job reads Kafka's address, topic, TLS and SASL settings exactly as the services do.
    assert topic_container["args"][0] == "topic"
    assert topic_container["envFrom"] == container["envFrom"] and "env" not in topic_container


def redis_server_args(container: dict) -> list[str]:
    """redis-server's arguments after the `sh -c 'exec redis-server - "$@"' redis-server ...` wrapper."""
    assert container["command"] == ["sh", "-c"]
    script, argv0, *args = container["args"]
    assert script.startswith('exec redis-server - "$@" <<EOF') and argv0 == "redis-server"
    return args


def test_redis_matches_the_deployment_guide(base, configmap):
    redis = one(base, "StatefulSet", "atas-redis")
    (container,) = pod_containers(redis)
    assert container["image"] == "redis:8.4-alpine"
    assert container["resources"]["requests"]["memory"] == "256Mi"
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert container["readinessProbe"] and container["livenessProbe"]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert one(base, "Service", "atas-redis")["metadata"]["name"] == configmap["REDIS_HOST"]
    # maxmemory below the container limit: Redis evicts instead of being OOM-killed.
    args = redis_server_args(container)
    assert int(args[args.index("--maxmemory") + 1].removesuffix("mb")) < 512


def test_database_connections_fit_postgres_max_connections(base, configmap):
    postgres = one(base, "StatefulSet", "atas-postgres")
    (container,) = pod_containers(postgres)
    max_connections = int(container["args"][container["args"].index("-c") + 1].split("=")[1])
    peak = sum(h["spec"]["maxReplicas"] for h in find(base, "HorizontalPodAutoscaler")) * int(configmap["DB_POOL_MAX"])
    assert peak + 10 <= max_connections, f"{peak} pooled connections at full scale"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_namespaced_object_lands_in_atas(variants, variant):
    """`kubectl apply -k` puts an object without a namespace in the context's namespace (usually
    `default`): a ServiceMonitor there scrapes nothing, a PDB there protects nothing."""
    for doc in variants[variant]:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == "atas", f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "atas"
    json.dumps(variants[variant])  # plain data: nothing YAML-specific (anchors, timestamps) leaks


def test_kubectl_is_new_enough_for_the_manifests():
    """The guide states kubectl >= 1.30 (kustomize v5): the tests must render with one at least as old."""
    assert kubectl_version() >= MINIMUM_KUBECTL


def test_topic_partitions_let_every_consumer_pod_work(base):
    """query (invalidation) and stream (bridge) pods each join a consumer group on the topic: pods
    beyond the partition count would sit idle, so maxReplicas must not exceed it."""
    (container,) = pod_containers(one(base, "Job", "atas-kafka-topics"))
    partitions = int(container["args"][container["args"].index("--partitions") + 1])
    for svc in ("query", "stream"):
        assert one(base, "HorizontalPodAutoscaler", f"atas-{svc}")["spec"]["maxReplicas"] <= partitions


def test_the_operator_guide_covers_every_component_and_overlay():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for part in [*COMPONENTS, *OVERLAYS]:
        assert f"{part.parent.name}/{part.name}" in guide, f"docs/deploy.md does not mention {part.name}"
    for must in ("openssl rand -base64 32", "Production checklist", "Troubleshooting", "EKS", "GKE", "AKS"):
        assert must in guide
