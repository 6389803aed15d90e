"""`atas topic`, what the topic Job runs: creates the events topic once, describes an existing one,
and fails with Kafka's reason when Kafka refuses or cannot be reached."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.kafka


def _topic(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atas.cli.main", "topic", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_creates_once_then_describes_and_warns_about_too_few_partitions(kafka_server):
    topic = f"atas.events.cli-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_server, "KAFKA_TOPIC": topic}
    env.pop("DB_URL", None)  # the Job has it, but the command needs nothing but Kafka
    env.pop("JWT_SECRET", None)
    first = _topic(env, "--partitions", "3", "--config", "retention.ms=3600000")
    assert first.returncode == 0, first.stderr
    # The test broker's default.replication.factor is 1: that is what a new topic gets.
    assert first.stdout.strip() == f"topic {topic} created: 3 partitions, replication factor 1"
    again = _topic(env, "--partitions", "6")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"topic {topic} exists: 3 partitions, replication factor 1"
    assert "has 3 partitions, fewer than the 6 asked" in again.stderr


def test_a_refusal_fails_at_once_with_kafkas_reason(kafka_server):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_server,
           "KAFKA_TOPIC": f"atas.events.cli-{uuid.uuid4().hex[:8]}"}
    too_many = _topic(env, "--replication-factor", "3")  # one broker
    assert too_many.returncode == 1
    assert "replication factor of 3 cannot be reached" in too_many.stderr
    bad_config = _topic(env, "--config", "retention.ms=soon")
    assert bad_config.returncode == 1
    assert "retention.ms" in bad_config.stderr


def test_an_unreachable_kafka_is_retried_until_the_wait_then_named():
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
    run = _topic(env, "--wait", "2")
    assert run.returncode == 1
    assert "not reachable yet" in run.stderr
    assert f"Kafka at 127.0.0.1:{port} (PLAINTEXT) did not answer within 2 s" in run.stderr
