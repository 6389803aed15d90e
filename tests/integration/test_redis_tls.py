"""Redis over TLS with an ACL user (REDIS_TLS, REDIS_TLS_CA_FILE, REDIS_USERNAME), as managed
services with in-transit encryption require: a real redis-server with a TLS port and its own CA."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import msgspec
import pytest
import redis.exceptions

from atas.common.config import RedisSettings, load_settings
from atas.common.redis import create_redis
from atas.common.stack import free_port, port_open, wait_for
from atas.stream.fanout import Hub, RedisFanout
from tests.helpers import make_tls_files, stop_process

USER, PASSWORD = "atas", "tls-test-password"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """A redis-server that only speaks TLS, with a certificate for 127.0.0.1 from a private CA,
    and only the ACL user ``atas`` (the default user is off)."""
    assert shutil.which("redis-server"), "redis-server is required (scripts/test installs it)"
    d = tmp_path_factory.mktemp("redis-tls")
    tls = make_tls_files(d)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
         "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all", "--user", "default", "off"],
        cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 10, "redis-server with TLS")
        assert proc.poll() is None, "redis-server with TLS did not start"
        yield port, str(tls.ca)
    finally:
        stop_process(proc)


def _settings(port: int, ca: str | None, **kw) -> RedisSettings:
    return RedisSettings(host="127.0.0.1", port=port, tls=True, tls_ca_file=ca, username=USER,
                         password=PASSWORD, timeout_ms=2000, **kw)


async def test_commands_and_pubsub_fanout_work_over_tls_with_an_acl_user(tls_redis):
    port, ca = tls_redis
    settings = load_settings({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_TLS": "true",
                              "REDIS_TLS_CA_FILE": ca, "REDIS_USERNAME": USER, "REDIS_PASSWORD": PASSWORD,
                              "JWT_SECRET": "x" * 32, "DB_URL": "postgresql://h/db",
                              "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}).redis
    assert settings == _settings(port, ca)
    client = create_redis(settings)
    hub = Hub()
    got: list[list[bytes]] = []
    hub.deliver_published = lambda project, messages: got.append(messages)  # what the fan-out hands on
    hub.clients["demo"] = set()
    fanout = RedisFanout(settings, hub, channel_prefix="atas:tls:c:", linger_s=0.1)
    await fanout.start()
    try:
        assert await client.set("atas:tls:k", b"v") and await client.get("atas:tls:k") == b"v"
        assert await asyncio.wait_for(fanout.watch("demo"), 10)  # TLS, AUTH atas <password>, SUBSCRIBE
        assert await client.publish("atas:tls:c:demo", b"hello") == 1
        async with asyncio.timeout(10):
            while not got:
                await asyncio.sleep(0.02)
        assert got == [[b"hello"]]
    finally:
        await fanout.stop()
        await client.aclose()


async def test_a_server_certificate_the_client_does_not_trust_is_refused(tls_redis):
    port, _ca = tls_redis
    client = create_redis(_settings(port, None))  # the system CAs do not know the test CA
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()
    finally:
        await client.aclose()


async def test_plaintext_and_wrong_credentials_are_refused(tls_redis):
    port, ca = tls_redis
    plain = create_redis(RedisSettings(host="127.0.0.1", port=port, username=USER, password=PASSWORD,
                                       timeout_ms=1000))
    wrong = create_redis(msgspec.structs.replace(_settings(port, ca), password="wrong"))
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await plain.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            await wrong.ping()
    finally:
        await plain.aclose()
        await wrong.aclose()


async def test_the_pubsub_connection_backs_off_when_redis_refuses_its_credentials(tls_redis):
    """A wrong password must not become a reconnect loop (a TLS handshake and a resync of every
    client each time): the connection never counts as up, and retries slow down."""
    port, ca = tls_redis
    fanout = RedisFanout(msgspec.structs.replace(_settings(port, ca), password="wrong"), Hub(),
                         channel_prefix="atas:tls:c:", linger_s=0.1)
    attempts = 0
    handshake = fanout._handshake

    async def counted(conn):
        nonlocal attempts
        attempts += 1
        await handshake(conn)
    fanout._handshake = counted
    await fanout.start()
    try:
        await asyncio.sleep(3)
        assert not fanout.connected.is_set()
        assert 2 <= attempts <= 7, attempts  # 0.1, 0.2, 0.4, 0.8, 1.6 s apart (was ~30 in 3 s)
    finally:
        await fanout.stop()
