"""Session-scoped real servers for the test suite.

Servers come from the environment when ``scripts/test`` exported a stack (``DB_URL``,
``REDIS_HOST``/``REDIS_PORT``, ``KAFKA_BOOTSTRAP_SERVERS``); otherwise the session starts a private
stack of its own (``atas.common.stack``) in a temporary folder and stops it at the end. Nothing is
ever faked, and nothing is skipped: a server that cannot start fails the tests that need it.

A test gets a server only when it carries the marker (``pg``, ``redis``, ``kafka``); asking for one
without the marker is an error, so ``-m "not kafka"`` selections stay honest.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import asyncpg
import pytest

from atas.common.config import (
    CacheTtls, DatabaseSettings, KafkaSettings, RedisSettings, Settings, parse_db_url,
)

TEST_JWT_SECRET = "test-secret-" + "x" * 40


class _Servers:
    """Lazily started servers of this test session."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self._stack = None
        self.started: list[str] = []

    @property
    def stack(self):
        if self._stack is None:
            from atas.common.stack import Stack

            self._stack = Stack(self.tmp / "stack")
        return self._stack

    def postgres_url(self) -> str:
        if os.environ.get("DB_URL"):
            return parse_db_url(os.environ["DB_URL"], os.environ.get("DB_USER"), os.environ.get("DB_PASSWORD"))
        env = self.stack.up(["postgres"])
        self.started.append("postgres")
        return env["DB_URL"]

    def redis(self) -> tuple[str, int]:
        if os.environ.get("REDIS_HOST"):
            return os.environ["REDIS_HOST"], int(os.environ.get("REDIS_PORT") or 6379)
        env = self.stack.up(["redis"])
        self.started.append("redis")
        return env["REDIS_HOST"], int(env["REDIS_PORT"])

    def kafka(self) -> str:
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        env = self.stack.up(["kafka"])
        self.started.append("kafka")
        return env["KAFKA_BOOTSTRAP_SERVERS"]

    def s3(self) -> dict[str, str]:
        """STORAGE_URL, S3_ENDPOINT_URL, S3_REGION and the S3Proxy's access keys."""
        if os.environ.get("S3_ENDPOINT_URL") and os.environ.get("AWS_ACCESS_KEY_ID"):
            return {k: os.environ[k] for k in ("STORAGE_URL", "S3_ENDPOINT_URL", "S3_REGION", "AWS_ACCESS_KEY_ID",
                                               "AWS_SECRET_ACCESS_KEY")}
        env = self.stack.up(["s3"])
        self.started.append("s3")
        return {k: env[k] for k in ("STORAGE_URL", "S3_ENDPOINT_URL", "S3_REGION", "AWS_ACCESS_KEY_ID",
                                    "AWS_SECRET_ACCESS_KEY")}

    def close(self) -> None:
        if self._stack is not None and self.started:
            self._stack.down(purge=True)


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    s = _Servers(tmp_path_factory.mktemp("atas"))
    yield s
    s.close()


def _require_marker(request, marker: str) -> None:
    if request.node.get_closest_marker(marker) is None and request.scope == "function":
        pytest.fail(f"this test uses a real {marker} server: mark it with @pytest.mark.{marker}")


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def pg_server_url(servers) -> str:
    return servers.postgres_url()


@pytest.fixture(scope="session")
async def pg_dsn(pg_server_url):
    """A fresh, migrated database for this session on the real server; dropped at the end."""
    from atas.common.db import create_database, drop_database

    dsn = await create_database(pg_server_url, f"atas_test_{secrets.token_hex(4)}", migrate=True)
    yield dsn
    await drop_database(dsn)


@pytest.fixture
async def pg(request, pg_dsn):
    """The session database, emptied before the test. Yields its DSN."""
    _require_marker(request, "pg")
    conn = await asyncpg.connect(pg_dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT LIKE 'results\\_%' AND tablename <> 'atas_schema_history'")
        names = ", ".join(f'"{r["tablename"]}"' for r in tables)
        if names:
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    return pg_dsn


@pytest.fixture
async def pg_pool(pg):
    from atas.common.db import create_pool

    pool = await create_pool(DatabaseSettings(dsn=pg, pool_min=1, pool_max=10), application_name="atas-test")
    yield pool
    await pool.close()


# ------------------------------------------------------------------------------ Redis


@pytest.fixture(scope="session")
def redis_server(servers) -> tuple[str, int]:
    return servers.redis()


@pytest.fixture
async def redis_settings(request, redis_server) -> RedisSettings:
    """Settings for the real Redis, flushed before the test."""
    _require_marker(request, "redis")
    from redis.asyncio import Redis

    host, port = redis_server
    client = Redis(host=host, port=port)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    return RedisSettings(host=host, port=port, timeout_ms=2000, pool_max_active=32, pool_max_idle=32)


@pytest.fixture
async def redis_client(redis_settings):
    from atas.common.redis import create_redis

    client = create_redis(redis_settings)
    yield client
    await client.aclose()


# ------------------------------------------------------------------------------ Kafka


@pytest.fixture(scope="session")
def kafka_server(servers) -> str:
    return servers.kafka()


@pytest.fixture
async def kafka_settings(request, kafka_server) -> KafkaSettings:
    """Settings for the real broker, with a topic of this test's own (created, 3 partitions)."""
    _require_marker(request, "kafka")
    from atas.common.bus import KafkaBus

    settings = KafkaSettings(bootstrap_servers=kafka_server, topic=f"atas.events.test-{uuid.uuid4().hex[:12]}")
    await KafkaBus(settings).ensure_topic(partitions=3)
    return settings


# ------------------------------------------------------------------------------ S3 (S3Proxy)


@pytest.fixture(scope="session")
def s3_server(servers) -> dict[str, str]:
    return servers.s3()


@pytest.fixture
def storage_settings(request, s3_server):
    """Settings for the real S3Proxy, with a key prefix of this test's own (objects of other tests
    never show up in its listings)."""
    _require_marker(request, "s3")
    from atas.common.storage import StorageSettings

    bucket = s3_server["STORAGE_URL"].removeprefix("s3://").split("/")[0]
    return StorageSettings(url=s3_server["STORAGE_URL"], scheme="s3", bucket=bucket,
                           prefix=f"test-{uuid.uuid4().hex[:12]}/", region=s3_server["S3_REGION"],
                           endpoint_url=s3_server["S3_ENDPOINT_URL"], access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
                           secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"])


# ------------------------------------------------------------------------------ settings


def make_settings(*, db_dsn: str | None = None, redis: RedisSettings | None = None,
                  kafka: KafkaSettings | None = None, **overrides) -> Settings:
    """Settings for an in-process app under test; unset parts select the in-process engines."""
    return Settings(
        db=DatabaseSettings(dsn=db_dsn, pool_min=0, pool_max=10) if db_dsn else None,
        redis=redis, kafka=kafka, jwt_secret=TEST_JWT_SECRET,
        cache_ttl=overrides.pop("cache_ttl", CacheTtls()), drain_seconds=overrides.pop("drain_seconds", 5.0),
        mode=overrides.pop("mode", "serve"), **overrides,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes an `atas` subprocess load the same settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DB_URL", "DB_USER", "DB_PASSWORD", "REDIS_HOST", "REDIS_PORT", "KAFKA_BOOTSTRAP_SERVERS",
                         "STORAGE_URL", "S3_ENDPOINT_URL", "S3_REGION")}
    env["JWT_SECRET"] = settings.jwt_secret
    if settings.db:
        env["DB_URL"] = settings.db.dsn
    if settings.redis:
        env["REDIS_HOST"], env["REDIS_PORT"] = settings.redis.host, str(settings.redis.port)
    if settings.kafka:
        env["KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers
        env["KAFKA_TOPIC"] = settings.kafka.topic
    if settings.storage is not None:
        st = settings.storage
        env["STORAGE_URL"] = st.url if st.scheme == "file" else f"s3://{st.bucket}/{st.prefix}".rstrip("/")
        if st.endpoint_url:
            env["S3_ENDPOINT_URL"] = st.endpoint_url
        if st.region:
            env["S3_REGION"] = st.region
        if st.access_key_id:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = st.access_key_id, st.secret_access_key
    env["SHUTDOWN_DRAIN_SECONDS"] = str(settings.drain_seconds)
    return env


@pytest.fixture
def token():
    """Mint a token for the test secret: token(scopes=[...], projects=[...])."""
    from atas.common.auth import mint_token

    def _mint(scopes=("ingest:write", "query:read", "stream:read"), projects=("demo",), ttl=3600, **kw):
        return mint_token(TEST_JWT_SECRET, subject="test", scopes=scopes, projects=projects, ttl_seconds=ttl, **kw)

    return _mint
