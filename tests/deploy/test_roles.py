"""The ConfigMap's values run the real roles: `atas migrate` (the Job) succeeds, `atas serve
ingest|query|stream` (the Deployments) become ready on real PostgreSQL, Redis and Kafka, and stop
on SIGTERM inside their Deployment's terminationGracePeriodSeconds. Only addresses and credentials
are replaced by the test servers'; every tuning value is the shipped one."""

from __future__ import annotations

import subprocess
import sys
import uuid
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import TEST_JWT_SECRET
from tests.helpers import ServiceProcess

from .conftest import SERVICES, one
from .manifests import pod_spec

pytestmark = [pytest.mark.deploy, pytest.mark.pg, pytest.mark.redis, pytest.mark.kafka, pytest.mark.e2e]


@pytest.fixture
def role_env(configmap, pg, redis_settings, kafka_settings) -> dict[str, str]:
    dsn = urlsplit(pg)
    env = dict(configmap)
    env.update({
        "DB_URL": pg, "DB_USER": unquote(dsn.username or ""), "DB_PASSWORD": unquote(dsn.password or ""),
        "REDIS_HOST": redis_settings.host, "REDIS_PORT": str(redis_settings.port), "REDIS_PASSWORD": "",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers, "KAFKA_TOPIC": kafka_settings.topic,
        "JWT_SECRET": TEST_JWT_SECRET,
        # Its own consumer group, so parallel test sessions on the shared broker don't rebalance it.
        "STREAM_BRIDGE_GROUP": f"atas-stream-bridge-{uuid.uuid4().hex[:8]}",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def test_the_migration_job_command_succeeds_with_the_configmap(role_env, base):
    (container,) = pod_spec(one(base, "Job", "atas-migrate"))["containers"]
    result = subprocess.run([sys.executable, "-m", "atas.cli.main", *container["args"]], env=role_env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "migrations up to date" in result.stderr


def test_every_role_becomes_ready_and_stops_within_its_grace_period(role_env, base, tmp_path):
    processes = {}
    try:
        for svc in SERVICES:
            spec = pod_spec(one(base, "Deployment", f"atas-{svc}"))
            (container,) = spec["containers"]
            env = {**role_env, **{e["name"]: e["value"] for e in container.get("env", [])}}
            processes[svc] = (ServiceProcess(container["args"], env, tmp_path, svc),
                              spec["terminationGracePeriodSeconds"])
        for svc, (proc, _grace) in processes.items():
            proc.wait_healthy(timeout=60, path="/readyz")
        for svc, (proc, grace) in processes.items():
            proc.terminate()
            code = proc.wait(timeout=grace)
            assert code == 0, f"{svc} exited with {code}:\n{proc.logs()}"
    finally:
        for proc, _grace in processes.values():
            proc.stop()
