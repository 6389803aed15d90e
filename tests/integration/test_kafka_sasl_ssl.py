"""Kafka over TLS with SASL (KAFKA_SECURITY_PROTOCOL=SASL_SSL, KAFKA_SASL_*, KAFKA_TLS_CA_FILE), as
managed brokers require: a real broker of its own with a SASL_SSL listener and a private CA."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import msgspec
import pytest
from aiokafka.errors import KafkaError

from atas.common.bus import KafkaBus
from atas.common.config import KafkaSettings, load_settings
from atas.common.stack import Stack, free_port, port_open, wait_for
from tests.helpers import make_tls_files, stop_process

pytestmark = pytest.mark.kafka

USER, PASSWORD = "atas", "sasl-test-password"


@pytest.fixture(scope="module")
def sasl_ssl_broker(kafka_server):
    """A single KRaft broker whose client listener speaks SASL_SSL (a PLAIN user from a JAAS
    config) with a certificate for 127.0.0.1 from a private CA. ``kafka_server`` first: the test
    stack has fetched the broker's jars."""
    d = Path(tempfile.mkdtemp(prefix="atas-kafka-sasl-"))
    tls = make_tls_files(d)
    (d / "keystore.pem").write_text(tls.key.read_text() + tls.cert.read_text())
    port, internal, controller = free_port(), free_port(), free_port()
    jaas = (f'org.apache.kafka.common.security.plain.PlainLoginModule required '
            f'user_{USER}="{PASSWORD}";')
    props = d / "server.properties"
    props.write_text(textwrap.dedent(f"""\
        process.roles=broker,controller
        node.id=1
        controller.quorum.voters=1@127.0.0.1:{controller}
        listeners=SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}
        advertised.listeners=SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal}
        controller.listener.names=CONTROLLER
        listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
        inter.broker.listener.name=INTERNAL
        sasl.enabled.mechanisms=PLAIN
        listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}
        ssl.keystore.type=PEM
        ssl.keystore.location={d / "keystore.pem"}
        log.dirs={d / "data"}
        offsets.topic.replication.factor=1
        offsets.topic.num.partitions=3
        transaction.state.log.replication.factor=1
        transaction.state.log.min.isr=1
        share.coordinator.state.topic.replication.factor=1
        share.coordinator.state.topic.min.isr=1
        group.initial.rebalance.delay.ms=0
        """))
    log_file = d / "kafka.log"
    broker = Stack(d).launch_kafka(props, log_file, heap_mb=384)
    try:
        wait_for(lambda: port_open(port) or broker.poll() is not None, 90, "SASL_SSL broker", log_file)
        assert broker.poll() is None, log_file.read_text()[-3000:]
        yield f"127.0.0.1:{port}", str(tls.ca)
    finally:
        stop_process(broker)
        shutil.rmtree(d, ignore_errors=True)


async def test_publish_and_consume_over_sasl_ssl(sasl_ssl_broker):
    bootstrap, ca = sasl_ssl_broker
    topic = f"atas.events.sasl-{uuid.uuid4().hex[:8]}"
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic,
                              "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": USER,
                              "KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_TLS_CA_FILE": ca,
                              "DB_URL": "postgresql://h/db", "JWT_SECRET": "x" * 32}).kafka
    assert settings == KafkaSettings(bootstrap_servers=bootstrap, topic=topic, security_protocol="SASL_SSL",
                                     sasl_mechanism="PLAIN", sasl_username=USER, sasl_password=PASSWORD,
                                     tls_ca_file=ca)
    bus = KafkaBus(settings)
    async with asyncio.timeout(60):  # the broker may still be electing itself
        while True:
            try:
                await bus.ensure_topic(partitions=2)
                break
            except KafkaError:
                await asyncio.sleep(0.5)
    sub = bus.subscription(f"test-{uuid.uuid4().hex[:8]}", from_beginning=True)
    pub = bus.publisher("test")
    await sub.start()
    await pub.start()
    try:
        await pub.publish([(b"k1", b"one"), (b"k2", b"two")])
        got = []
        async with asyncio.timeout(30):
            while len(got) < 2:
                got.extend(await sub.poll(1.0))
        assert sorted(m.value for m in got) == [b"one", b"two"]
        await sub.commit()
    finally:
        await pub.stop()
        await sub.stop()


async def test_wrong_password_and_untrusted_certificate_are_refused_with_the_reason_logged(sasl_ssl_broker,
                                                                                           caplog):
    bootstrap, ca = sasl_ssl_broker
    good = KafkaSettings(bootstrap_servers=bootstrap, topic="atas.events.refused", security_protocol="SASL_SSL",
                         sasl_mechanism="PLAIN", sasl_username=USER, sasl_password=PASSWORD, tls_ca_file=ca)
    pub = KafkaBus(good).publisher("test")
    await pub.start()  # the broker is there and takes the right credentials
    await pub.stop()
    for bad, reason in ((msgspec.structs.replace(good, sasl_password="wrong"), "SaslAuthenticationFailed"),
                        # the system CAs do not know the test CA
                        (msgspec.structs.replace(good, tls_ca_file=None), "CERTIFICATE_VERIFY_FAILED")):
        caplog.clear()
        pub = KafkaBus(bad).publisher("test")
        with pytest.raises(KafkaError):
            async with asyncio.timeout(30):
                await pub.start()
        await pub.stop()
        assert any(reason in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_the_topic_job_creates_the_topic_over_sasl_ssl(sasl_ssl_broker):
    """`atas topic` (the Kubernetes and compose topic Job) reaches a managed-style broker with the
    services' own settings; a second run finds the topic and changes nothing."""
    bootstrap, ca = sasl_ssl_broker
    topic = f"atas.events.job-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic,
           "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": PASSWORD,
           "KAFKA_TLS_CA_FILE": ca}
    runs = [subprocess.run([sys.executable, "-m", "atas.cli.main", "topic", "--partitions", "4", "--wait", "60"],
                           env=env, capture_output=True, text=True, timeout=120) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert runs[0].stdout.strip() == f"topic {topic} created: 4 partitions, replication factor 1"
    assert runs[1].stdout.strip() == f"topic {topic} exists: 4 partitions, replication factor 1"
    # Without the credentials the broker refuses, and the command says what to check.
    bad = subprocess.run([sys.executable, "-m", "atas.cli.main", "topic", "--wait", "2"],
                         env={**env, "KAFKA_SASL_PASSWORD": "wrong"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "KAFKA_SECURITY_PROTOCOL/SASL settings" in bad.stderr
