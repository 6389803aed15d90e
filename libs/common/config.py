"""Configuration: read once from the environment into frozen, typed settings.

Variable names are the ones of the deployment guide operators already use (see DESIGN.md). Every
problem is collected and reported at once, each naming its variable, so a bad deployment fails at
start with a message an operator can act on instead of at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import msgspec

from .storage import StorageSettings, parse_storage

DEFAULT_TOPIC = "atas.events"


class ConfigError(Exception):
    """One or more environment variables are missing or invalid."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class DatabaseSettings(msgspec.Struct, frozen=True):
    dsn: str  # postgresql://user:password@host:port/db, credentials already merged in
    pool_min: int = 2
    pool_max: int = 10
    statement_timeout_ms: int = 30_000

    def redacted(self) -> str:
        return redact_dsn(self.dsn)


class RedisSettings(msgspec.Struct, frozen=True):
    host: str
    port: int = 6379
    password: str | None = None
    username: str | None = None  # an ACL user (Redis 6+, managed services' RBAC); None: "default"
    tls: bool = False  # in-transit encryption, server certificate and host name verified
    tls_ca_file: str | None = None  # CA bundle for the server certificate; None: the system's
    timeout_ms: int = 2000
    pool_max_active: int = 8
    pool_max_idle: int = 8
    pool_min_idle: int = 0


KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSettings(msgspec.Struct, frozen=True):
    bootstrap_servers: str
    topic: str = DEFAULT_TOPIC
    security_protocol: str = "PLAINTEXT"  # one of KAFKA_PROTOCOLS
    sasl_mechanism: str | None = None  # one of KAFKA_SASL_MECHANISMS, with SASL_*
    sasl_username: str | None = None
    sasl_password: str | None = None
    tls_ca_file: str | None = None  # CA bundle for the brokers' certificates; None: the system's


class CacheTtls(msgspec.Struct, frozen=True):
    overview: int = 60
    recent: int = 30
    trends: int = 300
    status: int = 10


class Settings(msgspec.Struct, frozen=True):
    """Everything a process needs to start; built by :func:`load_settings`.

    ``redis`` or ``kafka`` is ``None`` only in ``atas dev``, where the in-process engines stand in.
    """

    db: DatabaseSettings | None
    redis: RedisSettings | None
    kafka: KafkaSettings | None
    jwt_secret: str
    port: int = 8080
    cache_ttl: CacheTtls = CacheTtls()
    # Seconds a SIGTERM'd process keeps serving in-flight requests before it closes connections.
    # Kubernetes' terminationGracePeriodSeconds must exceed this plus the preStop sleep.
    drain_seconds: float = 20.0
    log_level: str = "info"
    mode: Literal["serve", "dev"] = "serve"
    # A background loop (relay, bridge, invalidator, rollup worker, ...) without a heartbeat for
    # this long is stuck: /healthz answers 503 and Kubernetes restarts the pod. Every call those
    # loops make is bounded far below it (the longest: a 15 s publish wait after a 30 s back-off).
    loop_stall_s: float = 120.0
    # Days of executions, results and per-test rollup days kept (`atas retention`, docs/deploy.md).
    retention_days: int = 90

    # Object storage for attachments; None when STORAGE_URL is unset (attachments are then off).
    storage: StorageSettings | None = None
    # Origins whose scripts may call the API (CORS_ALLOWED_ORIGINS); empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = ()


# Defaults are written once, in the structs above; the loader reads them from these instances.
_DB = DatabaseSettings(dsn="")
_REDIS = RedisSettings(host="")
_TTL = CacheTtls()
_DEFAULTS = Settings(db=None, redis=None, kafka=None, jwt_secret="")


class EnvReader:
    """Typed reads of environment variables that collect problems instead of raising at the first."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def str(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            if required:
                self.problems.append(f"{name} is required but not set")
            return default
        return value.strip()

    def int(self, name: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            self.problems.append(f"{name} must be an integer, got {raw!r}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            self.problems.append(f"{name} must be {bounds}, got {value}")
            return default
        return value

    _TRUE = ("1", "true", "yes", "on")
    _FALSE = ("0", "false", "no", "off")

    def bool(self, name: str, default: bool) -> bool:
        """A switch: true/false, 1/0, yes/no, on/off (any case)."""
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        value = raw.strip().lower()
        if value in self._TRUE:
            return True
        if value in self._FALSE:
            return False
        self.problems.append(f"{name} must be true or false (or 1/0, on/off, yes/no), got {raw!r}")
        return default

    def float(self, name: str, default: float, *, lo: float = 0.0) -> float:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = float(raw.strip())
        except ValueError:
            value = float("nan")
        if value != value or value in (float("inf"), float("-inf")):
            self.problems.append(f"{name} must be a finite number, got {raw!r}")
            return default
        if value < lo:
            self.problems.append(f"{name} must be at least {lo}, got {value}")
            return default
        return value


_LIBPQ_PARAMS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "connect_timeout",
                           "target_session_attrs", "krbsrvname", "gsslib", "host", "port"})
# JDBC driver options with no meaning for asyncpg; accepted so a URL from the JDBC guide still works.
_JDBC_IGNORED = frozenset({"ApplicationName", "loginTimeout", "socketTimeout", "connectTimeout", "tcpKeepAlive",
                           "prepareThreshold", "reWriteBatchedInserts", "sslfactory"})


def parse_db_url(url: str, user: str | None = None, password: str | None = None) -> str:
    """Normalise ``DB_URL`` to an asyncpg DSN.

    Accepts the JDBC form of the existing deployment guide (``jdbc:postgresql://host:5432/db``) and
    plain ``postgresql://`` / ``postgres://`` URLs. ``DB_USER``/``DB_PASSWORD`` override credentials
    embedded in the URL. Raises ``ValueError`` with a readable reason.
    """
    raw = url.strip()
    if raw.startswith("jdbc:"):
        raw = raw[len("jdbc:"):]
    parts = urlsplit(raw)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(
            f"scheme must be postgresql:// or jdbc:postgresql://, got {parts.scheme or 'none'!r}"
        )
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("a host is required, e.g. postgresql://db.example:5432/atas")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    db = parts.path.lstrip("/")
    if not db:
        raise ValueError("a database name is required, e.g. postgresql://host:5432/atas")
    # JDBC carries credentials as query parameters (?user=..&password=..); asyncpg wants userinfo.
    # Other parameters: libpq's are kept, JDBC's `ssl=true` becomes `sslmode=require`, and anything
    # else is refused by name (asyncpg would pass an unknown one to the server as a setting, and
    # PostgreSQL would then refuse every connection).
    query_pairs = [p for p in parts.query.split("&") if p]
    kept: list[str] = []
    keys = {pair.partition("=")[0] for pair in query_pairs}
    for pair in query_pairs:
        key, _, value = pair.partition("=")
        if key == "user":
            user = unquote(value) if user is None else user
        elif key == "password":
            password = unquote(value) if password is None else password
        elif key in _LIBPQ_PARAMS:
            kept.append(pair)
        elif key == "ssl":
            if value.lower() == "true" and "sslmode" not in keys:
                kept.append("sslmode=require")
        elif key in _JDBC_IGNORED:
            continue
        else:
            raise ValueError(f"unsupported parameter {key!r}; supported: {', '.join(sorted(_LIBPQ_PARAMS))}, "
                             "and JDBC's ssl=true")
    user = user if user is not None else (unquote(parts.username) if parts.username else None)
    if password is None and parts.password:
        password = unquote(parts.password)
    netloc = ""
    if user:
        netloc = quote(user, safe="")
        if password:
            netloc += ":" + quote(password, safe="")
        netloc += "@"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc += host + (f":{port}" if port else "")
    return urlunsplit(("postgresql", netloc, "/" + db, "&".join(kept), ""))


def redact_dsn(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(":" + quote(unquote(parts.password), safe="") + "@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


def load_settings(env: Mapping[str, str] | None = None, *, mode: Literal["serve", "dev"] = "serve",
                  need_db: bool = True) -> Settings:
    """Build :class:`Settings` from the environment, or raise :class:`ConfigError`.

    In ``serve`` mode every dependency is required and Redis defaults to the ``atas-redis`` service;
    in ``dev`` mode an unset ``DB_URL``, ``REDIS_HOST`` or ``KAFKA_BOOTSTRAP_SERVERS`` selects the
    embedded PostgreSQL or the in-process engine instead.
    """
    env = os.environ if env is None else env
    e = EnvReader(env)
    serve = mode == "serve"

    db: DatabaseSettings | None = None
    db_url = e.str("DB_URL", required=serve and need_db)
    if db_url:
        try:
            dsn = parse_db_url(db_url, e.str("DB_USER"), e.str("DB_PASSWORD"))
        except ValueError as exc:
            e.problems.append(f"DB_URL is invalid: {exc}")
        else:
            db = DatabaseSettings(
                dsn=dsn,
                pool_min=e.int("DB_POOL_MIN", _DB.pool_min, lo=0, hi=1000),
                pool_max=e.int("DB_POOL_MAX", _DB.pool_max, lo=1, hi=1000),
                statement_timeout_ms=e.int("DB_STATEMENT_TIMEOUT_MS", _DB.statement_timeout_ms, lo=0),
            )
            if db.pool_min > db.pool_max:
                e.problems.append(f"DB_POOL_MIN ({db.pool_min}) must not exceed DB_POOL_MAX ({db.pool_max})")

    redis: RedisSettings | None = None
    redis_host = e.str("REDIS_HOST", "atas-redis" if serve else None)
    # REDIS_PORT is validated even when Redis is not used, so a typo never goes unnoticed.
    redis_port = e.int("REDIS_PORT", _REDIS.port, lo=1, hi=65535)
    timeout_ms = e.int("REDIS_TIMEOUT", _REDIS.timeout_ms, lo=1)
    max_active = e.int("REDIS_POOL_MAX_ACTIVE", _REDIS.pool_max_active, lo=1, hi=10_000)
    max_idle = e.int("REDIS_POOL_MAX_IDLE", _REDIS.pool_max_idle, lo=0, hi=10_000)
    min_idle = e.int("REDIS_POOL_MIN_IDLE", _REDIS.pool_min_idle, lo=0, hi=10_000)
    if min_idle > max_idle:
        e.problems.append(f"REDIS_POOL_MIN_IDLE ({min_idle}) must not exceed REDIS_POOL_MAX_IDLE ({max_idle})")
    if max_idle > max_active:
        e.problems.append(f"REDIS_POOL_MAX_IDLE ({max_idle}) must not exceed REDIS_POOL_MAX_ACTIVE ({max_active})")
    redis_password, redis_username = e.str("REDIS_PASSWORD"), e.str("REDIS_USERNAME")
    if redis_username and not redis_password:
        e.problems.append("REDIS_USERNAME is set without REDIS_PASSWORD: an ACL user authenticates with both")
    redis_tls = e.bool("REDIS_TLS", False)
    redis_ca = e.str("REDIS_TLS_CA_FILE")
    if redis_ca and not redis_tls:
        e.problems.append("REDIS_TLS_CA_FILE is set but REDIS_TLS is not true: connections would not be encrypted")
    elif redis_ca and not os.access(redis_ca, os.R_OK):
        e.problems.append(f"REDIS_TLS_CA_FILE {redis_ca!r} is not a readable file")
    if redis_host:
        redis = RedisSettings(
            host=redis_host, port=redis_port, password=redis_password, username=redis_username,
            tls=redis_tls, tls_ca_file=redis_ca, timeout_ms=timeout_ms,
            pool_max_active=max_active, pool_max_idle=max_idle, pool_min_idle=min_idle,
        )

    kafka: KafkaSettings | None = None
    bootstrap = e.str("KAFKA_BOOTSTRAP_SERVERS", required=serve)
    topic = e.str("KAFKA_TOPIC", DEFAULT_TOPIC) or DEFAULT_TOPIC
    if bootstrap:
        for server in bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                e.problems.append(
                    f"KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...], got {bootstrap!r}"
                )
                break
    protocol = (e.str("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") or "PLAINTEXT").upper()
    mechanism = e.str("KAFKA_SASL_MECHANISM")
    sasl_user, sasl_password = e.str("KAFKA_SASL_USERNAME"), e.str("KAFKA_SASL_PASSWORD")
    kafka_ca = e.str("KAFKA_TLS_CA_FILE")
    if protocol not in KAFKA_PROTOCOLS:
        e.problems.append(f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(KAFKA_PROTOCOLS)}, got {protocol!r}")
    elif protocol.startswith("SASL_"):
        mechanism = (mechanism or "PLAIN").upper()
        if mechanism not in KAFKA_SASL_MECHANISMS:
            e.problems.append(f"KAFKA_SASL_MECHANISM must be one of {', '.join(KAFKA_SASL_MECHANISMS)}, "
                              f"got {mechanism!r}")
        if not sasl_user or not sasl_password:
            e.problems.append(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        if protocol == "SASL_PLAINTEXT" and mechanism == "PLAIN":
            e.problems.append("KAFKA_SASL_MECHANISM=PLAIN over SASL_PLAINTEXT sends the password in clear text: "
                              "use SASL_SSL, or a SCRAM mechanism")
    elif mechanism or sasl_user or sasl_password:
        e.problems.append(f"KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is {protocol}: set SASL_SSL "
                          "(or SASL_PLAINTEXT) to authenticate")
    if kafka_ca and protocol not in ("SSL", "SASL_SSL"):
        e.problems.append(f"KAFKA_TLS_CA_FILE is set but KAFKA_SECURITY_PROTOCOL is {protocol}: connections "
                          "would not be encrypted (use SSL or SASL_SSL)")
    elif kafka_ca and not os.access(kafka_ca, os.R_OK):
        e.problems.append(f"KAFKA_TLS_CA_FILE {kafka_ca!r} is not a readable file")
    if bootstrap:
        kafka = KafkaSettings(bootstrap_servers=bootstrap, topic=topic, security_protocol=protocol,
                              sasl_mechanism=mechanism if protocol.startswith("SASL_") else None,
                              sasl_username=sasl_user, sasl_password=sasl_password, tls_ca_file=kafka_ca)

    jwt_secret = e.str("JWT_SECRET", required=serve) or ""
    if serve and jwt_secret and len(jwt_secret.encode()) < 32:
        e.problems.append(
            "JWT_SECRET must be at least 32 bytes for HS256; generate one with `openssl rand -base64 32`"
        )

    ttl = CacheTtls(
        overview=e.int("CACHE_TTL_OVERVIEW", _TTL.overview, lo=0),
        recent=e.int("CACHE_TTL_RECENT", _TTL.recent, lo=0),
        trends=e.int("CACHE_TTL_TRENDS", _TTL.trends, lo=0),
        status=e.int("CACHE_TTL_STATUS", _TTL.status, lo=0),
    )
    settings_port = e.int("PORT", _DEFAULTS.port, lo=1, hi=65535)
    drain = e.float("SHUTDOWN_DRAIN_SECONDS", _DEFAULTS.drain_seconds)
    # At least 10 s: the slowest-beating loop when all is well (Pub/Sub, one PING every 5 s) must
    # never look stuck.
    loop_stall_s = e.float("HEALTH_LOOP_STALL_SECONDS", _DEFAULTS.loop_stall_s, lo=10.0)
    # Up to 100 years: a bigger horizon is "keep everything", and its date arithmetic overflows.
    retention_days = e.int("RETENTION_DAYS", _DEFAULTS.retention_days, lo=1, hi=36_500)
    log_level = (e.str("LOG_LEVEL", _DEFAULTS.log_level) or _DEFAULTS.log_level).lower()
    if log_level not in ("debug", "info", "warning", "error"):
        e.problems.append(f"LOG_LEVEL must be one of debug, info, warning, error, got {log_level!r}")
        log_level = "info"

    storage = parse_storage(e, mode=mode)
    from .cors import parse_origins

    cors_origins, cors_problems = parse_origins(e.str("CORS_ALLOWED_ORIGINS"))
    e.problems.extend(cors_problems)

    if e.problems:
        raise ConfigError(e.problems)
    return Settings(
        db=db, redis=redis, kafka=kafka, jwt_secret=jwt_secret, port=settings_port, cache_ttl=ttl,
        drain_seconds=drain, log_level=log_level, mode=mode, loop_stall_s=loop_stall_s,
        retention_days=retention_days, storage=storage,
        cors_origins=cors_origins,
    )
