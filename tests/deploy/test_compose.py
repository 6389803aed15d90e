"""compose.yaml: the same system as deploy/k8s on one machine. No container engine runs here, so
this checks the structure `docker compose up` depends on: start order, health, configuration."""

from __future__ import annotations

import re

import pytest

from .conftest import SERVICES, atas_containers, one, project_version
from .manifests import pod_containers

pytestmark = pytest.mark.deploy

ATAS_ROLES = {"ingest": ["serve", "ingest"], "query": ["serve", "query"], "stream-1": ["serve", "stream"],
              "stream-2": ["serve", "stream"]}


def _atas_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if s["image"].split(":")[0].endswith("/atas")}


def test_the_whole_system_is_there_with_two_stream_replicas(compose):
    services = compose["services"]
    assert {"postgres", "redis", "kafka", "kafka-topics", "migrate"} <= set(services)
    one_shots = {"migrate": ["migrate"], "kafka-topics": ["topic", "--partitions", "12"]}
    assert {n: s["command"] for n, s in _atas_services(compose).items() if n not in one_shots} == ATAS_ROLES
    assert {n: services[n]["command"] for n in one_shots} == one_shots


def test_images_are_pinned_and_the_same_as_in_kubernetes(compose, base):
    images = {s["image"] for s in compose["services"].values()}
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"{image} is not pinned"
    assert {s["image"] for s in _atas_services(compose).values()} == {f"ghcr.io/atas-dev/atas:{project_version()}"}
    k8s_images = {c["image"] for d in base for c in pod_containers(d)}
    third_party = images - {s["image"] for s in _atas_services(compose).values()}
    assert third_party == k8s_images - {c["image"] for _w, c in atas_containers(base)}
    assert "redis:8.4-alpine" in third_party
    assert any(re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", i) for i in third_party)


def test_every_long_running_service_has_a_healthcheck_and_waits_for_what_it_needs(compose):
    services = compose["services"]
    one_shots = {"migrate", "kafka-topics"}
    for name, service in services.items():
        if name in one_shots:
            assert service["restart"] == "no", name
            continue
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and not check.get("disable"), name
    for name in ATAS_ROLES:
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "kafka": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
            "kafka-topics": {"condition": "service_completed_successfully"},
        }, name
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["kafka-topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}


def test_atas_services_set_the_variables_the_code_reads(compose, code_env_vars, configmap):
    from .test_config_coverage import PENDING_CODE

    expected = set(code_env_vars) | PENDING_CODE
    for name, service in _atas_services(compose).items():
        env = service["environment"]
        assert set(env) == expected, (
            f"{name}: missing {sorted(expected - set(env))}, unread {sorted(set(env) - expected)}")
        # Tuning values follow the Kubernetes ConfigMap; only addresses and secrets differ.
        differs = {k for k in configmap if str(env[k]) != configmap[k]}
        allowed = {"DB_URL", "REDIS_HOST", "KAFKA_BOOTSTRAP_SERVERS", "LOG_LEVEL",
                   "REDIS_USERNAME", "KAFKA_SASL_USERNAME"}  # passed through from the shell
        if name.startswith("stream"):
            allowed.add("SHUTDOWN_DRAIN_SECONDS")
        assert differs <= allowed, f"{name}: {sorted(differs - allowed)} differ from configmap.yaml"


def test_credentials_agree_between_the_services_and_the_datastores(compose):
    services = compose["services"]
    atas_env = services["ingest"]["environment"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == atas_env["DB_PASSWORD"]
    assert services["postgres"]["environment"]["POSTGRES_USER"] == atas_env["DB_USER"]
    redis = services["redis"]
    assert redis["environment"]["REDIS_PASSWORD"] == redis["environment"]["REDISCLI_AUTH"] == atas_env["REDIS_PASSWORD"]
    assert 'requirepass "$$REDIS_PASSWORD"' in redis["command"][0]
    assert not any("--requirepass" in a or "REDIS_PASSWORD" in a for a in redis["command"][1:]), \
        "the password is configuration on stdin, never an argument (visible in ps)"
    default_secret = re.fullmatch(r"\$\{JWT_SECRET:-(.+)\}", atas_env["JWT_SECRET"]).group(1)
    assert len(default_secret.encode()) >= 32, "the development default must still be a valid HS256 key"
    assert services["kafka-topics"]["environment"] == atas_env  # same topic, address and credentials


def test_stop_grace_covers_the_drain_window_like_kubernetes(compose, base):
    for name, service in _atas_services(compose).items():
        if name in ("migrate", "kafka-topics"):
            continue
        grace = int(service["stop_grace_period"].removesuffix("s"))
        drain = float(service["environment"]["SHUTDOWN_DRAIN_SECONDS"])
        assert grace >= drain + 5, name
    stream_grace = one(base, "Deployment", "atas-stream")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert int(compose["services"]["stream-1"]["stop_grace_period"].removesuffix("s")) == stream_grace


def test_containers_run_as_hardened_as_the_pods(compose):
    from .test_dockerfile import image_user

    for name, service in _atas_services(compose).items():
        assert service["user"] == f"{image_user()}:{image_user()}", name
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
        assert service["cap_drop"] == ["ALL"], name
    ports = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert len(ports) == len(set(ports)) == len(SERVICES) + 1, "one host port per service and stream replica"
    assert all(p.startswith("127.0.0.1:") for p in ports), "published on loopback only"


def test_kafka_runs_with_the_same_settings_as_the_kubernetes_base(compose, base):
    k8s = {e["name"]: e["value"] for e in pod_containers(one(base, "StatefulSet", "atas-kafka"))[0]["env"]}
    local = {k: str(v) for k, v in compose["services"]["kafka"]["environment"].items()}
    # Addresses and start-up timing differ by nature; the durability and topic policy must not.
    per_machine = {"KAFKA_NODE_ID", "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_QUORUM_VOTERS",
                   "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"}
    assert set(local) - per_machine == set(k8s) - per_machine
    assert {k: local[k] for k in set(k8s) - per_machine} == {k: k8s[k] for k in set(k8s) - per_machine}


def test_postgres_accepts_every_pooled_connection(compose):
    command = compose["services"]["postgres"]["command"]
    max_connections = int(next(a for a in command if a.startswith("max_connections=")).split("=")[1])
    pools = sum(int(s["environment"]["DB_POOL_MAX"]) for s in _atas_services(compose).values())
    assert pools + 10 <= max_connections
