"""deploy/k8s over time: rollouts and node drains lose no request, one-shot Jobs run once per
release under `kubectl apply` and GitOps controllers alike, and data is expired daily."""

from __future__ import annotations

import re

import pytest

from .conftest import SERVICES, container_env, find, one
from .manifests import pod_containers, pod_spec
from .test_k8s import VARIANTS

pytestmark = pytest.mark.deploy

ALB_VARIANTS = [v for v in VARIANTS if v in ("base+alb", "overlays/production")]
# What the AWS Load Balancer Controller and the ALB need, from a pod's termination, to stop sending
# it new requests (components/alb/kustomization.yaml explains the arithmetic).
ALB_REACTION_SECONDS = 10


def _env(docs: list[dict], deployment: dict, secret_template: dict) -> dict[str, str]:
    (container,) = pod_spec(deployment)["containers"]
    configmap = one(docs, "ConfigMap", "atas-config")["data"]
    return container_env(container, configmap, set(secret_template["stringData"]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_shutdown_windows_fit_in_the_termination_grace_period(variants, variant, secret_template):
    """SIGTERM -> preStop sleep -> drain in-flight work -> close; Kubernetes must not SIGKILL first."""
    docs = variants[variant]
    drains = {}
    for svc in SERVICES:
        deployment = one(docs, "Deployment", f"atas-{svc}")
        spec = pod_spec(deployment)
        env = _env(docs, deployment, secret_template)
        pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        drains[svc] = float(env["SHUTDOWN_DRAIN_SECONDS"])
        # 5 s for what follows the drain: stopping consumers, flushing producers, closing pools.
        assert spec["terminationGracePeriodSeconds"] >= pre_stop + drains[svc] + 5, svc
        if svc == "stream":
            # stream caps the spread at 80 % of the drain window (services/stream/app.py); a larger
            # setting would silently be cut, so the shipped one must fit.
            assert float(env["STREAM_CLOSE_SPREAD_SECONDS"]) <= 0.8 * drains[svc]
    configmap = one(docs, "ConfigMap", "atas-config")["data"]
    assert drains["stream"] > drains["ingest"] == drains["query"] == float(configmap["SHUTDOWN_DRAIN_SECONDS"])


@pytest.mark.parametrize("variant", ALB_VARIANTS)
def test_alb_rollouts_drop_nothing(variants, variant, secret_template):
    docs = variants[variant]
    namespace = one(docs, "Namespace", "atas")
    assert namespace["metadata"]["labels"]["elbv2.k8s.aws/pod-readiness-gate-inject"] == "enabled", \
        "without the label the controller injects no readiness gates and rollouts outrun the ALB"
    for ingress in find(docs, "Ingress"):
        attrs = ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-group-attributes"]
        delay = int(re.search(r"deregistration_delay\.timeout_seconds=(\d+)", attrs).group(1))
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                deployment = one(docs, "Deployment", path["backend"]["service"]["name"])
                pre_stop = pod_spec(deployment)["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
                drain = float(_env(docs, deployment, secret_template)["SHUTDOWN_DRAIN_SECONDS"])
                name = deployment["metadata"]["name"]
                # The pod keeps serving until the ALB has stopped sending it new requests...
                assert pre_stop > ALB_REACTION_SECONDS, name
                # ...and the ALB keeps its connections until the pod has finished them.
                assert delay >= pre_stop + drain, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_disruption_budgets_never_stall_a_node_drain(variants, variant):
    pdbs = find(variants[variant], "PodDisruptionBudget")
    assert pdbs
    for pdb in pdbs:
        # With PostgreSQL down every ATAS pod is unready; evicting one can't make that worse.
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", pdb["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_replicas_of_a_rollout_spread_across_nodes_and_zones(variants, variant):
    for svc in SERVICES:
        spec = pod_spec(one(variants[variant], "Deployment", f"atas-{svc}"))
        keys = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
        assert set(keys) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for constraint in keys.values():
            # Without it the old ReplicaSet's pods count too, and new ones may share one node.
            assert constraint["matchLabelKeys"] == ["pod-template-hash"], svc
            assert constraint["labelSelector"]["matchLabels"] == {"app": f"atas-{svc}"}


@pytest.mark.parametrize("variant", ["base+kafka-ha", "overlays/self-hosted"])
def test_kafka_brokers_restart_one_at_a_time_with_time_to_catch_up(variants, variant):
    kafka = one(variants[variant], "StatefulSet", "atas-kafka")
    assert kafka["spec"]["minReadySeconds"] >= 60
    assert kafka["spec"].get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate"


def test_postgres_gets_time_for_crash_recovery_before_liveness_applies(base):
    (container,) = pod_containers(one(base, "StatefulSet", "atas-postgres"))
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "a long WAL replay must finish"
    assert "initialDelaySeconds" not in container["livenessProbe"], "the startup probe covers the start"


def test_redis_password_is_never_on_a_command_line(base):
    (container,) = pod_containers(one(base, "StatefulSet", "atas-redis"))
    script, *args = container["args"]
    assert 'requirepass "$REDIS_PASSWORD"' in script and script.lstrip().startswith("exec redis-server - ")
    assert not any("REDIS_PASSWORD" in a or "requirepass" in a for a in args)
    assert {e["name"] for e in container["env"]} == {"REDIS_PASSWORD", "REDISCLI_AUTH"}


ONE_SHOTS = {"atas-migrate": ("migrate", {2, 3}), "atas-kafka-topics": ("create-topic", {2})}


@pytest.mark.parametrize("name", ONE_SHOTS)
def test_jobs_run_once_per_release_under_apply_argo_cd_and_flux(base, name):
    job = one(base, "Job", name)
    container, fatal = ONE_SHOTS[name]
    # A Job that deletes itself is re-created and re-run by every later apply.
    assert "ttlSecondsAfterFinished" not in job["spec"]
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "Sync"
    assert annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
    assert annotations["kustomize.toolkit.fluxcd.io/force"] == "enabled"
    wave = int(annotations["argocd.argoproj.io/sync-wave"])
    for svc in SERVICES:
        deployment = one(base, "Deployment", f"atas-{svc}")
        assert int(deployment["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) > wave, \
            "Argo CD must roll the services out after the Jobs"
    # Exit codes no retry can fix fail the Job at once instead of backoffLimit times.
    assert pod_spec(job)["restartPolicy"] == "Never"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert [(r["onExitCodes"]["containerName"], r["onExitCodes"]["operator"]) for r in fail] == [(container, "In")]
    assert set(fail[0]["onExitCodes"]["values"]) == fatal
    assert any(r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget" for r in rules)
    assert job["spec"]["backoffLimit"] >= 5, "a datastore that is still starting is worth retrying"


def test_migration_refusal_exit_code_is_the_one_the_job_fails_fast_on():
    """`atas migrate` exits 3 when an applied migration changed (libs/cli/migrate.py)."""
    import inspect

    from atas.cli import migrate

    source = inspect.getsource(migrate.run)
    assert re.search(r"except MigrationError[^\n]*:\n(?:[^\n]*\n){0,2}\s+return 3\b", source)


def test_retention_runs_daily_one_at_a_time_with_the_configured_horizon(base, configmap):
    cron = one(base, "CronJob", "atas-retention")
    spec = cron["spec"]
    minute, hour, *rest = spec["schedule"].split()
    assert rest == ["*", "*", "*"] and minute.isdigit() and hour.isdigit(), "once a day"
    assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] == "Etc/UTC"
    job = spec["jobTemplate"]["spec"]
    assert pod_spec(cron)["restartPolicy"] == "Never"
    assert job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    (container,) = pod_containers(cron)
    assert container["args"] == ["retention"]
    assert {list(s)[0] for s in container["envFrom"]} == {"configMapRef", "secretRef"}
    assert configmap["RETENTION_DAYS"] == "90"
