import pytest

from atas.common.config import ConfigError, load_settings, parse_db_url

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092", "JWT_SECRET": "s" * 32}


def test_db_url_jdbc_and_plain_forms_parse_to_the_same_dsn():
    jdbc = parse_db_url("jdbc:postgresql://db.internal:5432/atas", "svc", "p@ss/word")
    plain = parse_db_url("postgresql://db.internal:5432/atas", "svc", "p@ss/word")
    assert jdbc == plain == "postgresql://svc:p%40ss%2Fword@db.internal:5432/atas"


def test_jdbc_query_credentials_and_options_are_kept_apart():
    dsn = parse_db_url("jdbc:postgresql://db:5432/atas?user=u&password=pw&sslmode=require")
    assert dsn == "postgresql://u:pw@db:5432/atas?sslmode=require"


def test_db_user_and_password_override_the_url():
    assert parse_db_url("postgres://a:b@h/db", "c", "d") == "postgresql://c:d@h/db"


@pytest.mark.parametrize("url, reason", [
    ("mysql://h/db", "scheme"),
    ("postgresql://h:5432/", "database name"),
    ("postgresql://h:99999/db", "port"),
])
def test_bad_db_urls_say_why(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_db_url(url)


def test_settings_from_environment():
    s = load_settings({**BASE, "DB_URL": "jdbc:postgresql://pg:5432/atas", "DB_USER": "u", "DB_PASSWORD": "p",
                       "REDIS_PORT": "6380", "CACHE_TTL_TRENDS": "120"})
    assert s.db.dsn == "postgresql://u:p@pg:5432/atas"
    assert s.redis.host == "atas-redis" and s.redis.port == 6380
    assert s.cache_ttl.trends == 120 and s.cache_ttl.overview == 60
    assert s.kafka.bootstrap_servers == "k1:9092" and s.kafka.topic == "atas.events"
    with pytest.raises(AttributeError):
        s.port = 1  # frozen


def test_bad_redis_port_is_named():
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, "DB_URL": "postgresql://h/db", "REDIS_PORT": "sixty"})
    assert any("REDIS_PORT" in p for p in info.value.problems)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_settings({"REDIS_PORT": "0", "REDIS_TIMEOUT": "x", "JWT_SECRET": "short"})
    text = str(info.value)
    for name in ("DB_URL", "REDIS_PORT", "REDIS_TIMEOUT", "KAFKA_BOOTSTRAP_SERVERS", "JWT_SECRET"):
        assert name in text


def test_dev_mode_leaves_unset_dependencies_to_in_process_engines():
    s = load_settings({}, mode="dev")
    assert s.db is None and s.redis is None and s.kafka is None


def test_pool_bounds_are_checked():
    with pytest.raises(ConfigError, match="REDIS_POOL_MAX_IDLE"):
        load_settings({**BASE, "DB_URL": "postgresql://h/db", "REDIS_POOL_MAX_ACTIVE": "4",
                       "REDIS_POOL_MAX_IDLE": "8"})


def test_switches_accept_the_usual_spellings_and_name_bad_ones():
    from atas.common.config import EnvReader

    e = EnvReader({"A": "on", "B": "FALSE", "C": "1", "D": "maybe"})
    assert (e.bool("A", False), e.bool("B", True), e.bool("C", False), e.bool("UNSET", True)) == (True, False, True, True)
    assert e.bool("D", True) is True and "D must be true or false" in e.problems[0]


def test_jdbc_ssl_maps_to_sslmode_and_unknown_parameters_are_named():
    assert parse_db_url("jdbc:postgresql://db/atas?ssl=true&ApplicationName=x") == \
        "postgresql://db/atas?sslmode=require"
    assert parse_db_url("postgresql://db/atas?sslmode=verify-full&sslrootcert=/ca.pem") == \
        "postgresql://db/atas?sslmode=verify-full&sslrootcert=/ca.pem"
    with pytest.raises(ValueError, match="unsupported parameter 'currentSchema'"):
        parse_db_url("jdbc:postgresql://db/atas?currentSchema=x")


def test_non_finite_numbers_are_refused():
    with pytest.raises(ConfigError, match="SHUTDOWN_DRAIN_SECONDS must be a finite number"):
        load_settings({**BASE, "DB_URL": "postgresql://h/db", "SHUTDOWN_DRAIN_SECONDS": "nan"})


def test_redis_tls_and_acl_settings_refuse_combinations_that_would_not_do_what_was_meant(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {**BASE, "DB_URL": "postgresql://h/db", "REDIS_HOST": "r"}
    redis = load_settings({**env, "REDIS_TLS": "true", "REDIS_TLS_CA_FILE": str(ca), "REDIS_USERNAME": "atas",
                           "REDIS_PASSWORD": "pw"}).redis
    assert (redis.tls, redis.tls_ca_file, redis.username, redis.password) == (True, str(ca), "atas", "pw")
    assert load_settings(env).redis.tls is False
    with pytest.raises(ConfigError) as info:
        load_settings({**env, "REDIS_TLS_CA_FILE": str(ca), "REDIS_USERNAME": "atas"})
    text = str(info.value)
    assert "REDIS_TLS_CA_FILE is set but REDIS_TLS is not true" in text  # would silently stay plaintext
    assert "REDIS_USERNAME is set without REDIS_PASSWORD" in text
    with pytest.raises(ConfigError, match="REDIS_TLS_CA_FILE '/nowhere/ca.pem' is not a readable file"):
        load_settings({**env, "REDIS_TLS": "yes", "REDIS_TLS_CA_FILE": "/nowhere/ca.pem"})


def test_kafka_security_settings_name_what_is_missing_or_contradictory(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {**BASE, "DB_URL": "postgresql://h/db"}
    kafka = load_settings({**env, "KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "scram-sha-512",
                           "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p", "KAFKA_TLS_CA_FILE": str(ca)}).kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username, kafka.tls_ca_file) == \
           ("SASL_SSL", "SCRAM-SHA-512", "u", str(ca))
    plain = load_settings(env).kafka
    assert (plain.security_protocol, plain.sasl_mechanism) == ("PLAINTEXT", None)
    assert load_settings({**env, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u",
                          "KAFKA_SASL_PASSWORD": "p"}).kafka.sasl_mechanism == "PLAIN"
    cases = {
        "KAFKA_SECURITY_PROTOCOL must be one of": {"KAFKA_SECURITY_PROTOCOL": "TLS"},
        "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD": {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        "KAFKA_SASL_MECHANISM must be one of": {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI",
                                                "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
        "KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT": {"KAFKA_SASL_USERNAME": "u"},
        "KAFKA_TLS_CA_FILE is set but KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT": {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p", "KAFKA_TLS_CA_FILE": str(ca)},
        "PLAIN over SASL_PLAINTEXT sends the password in clear text": {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
        "KAFKA_TLS_CA_FILE '/nowhere' is not a readable file": {"KAFKA_SECURITY_PROTOCOL": "SSL",
                                                                 "KAFKA_TLS_CA_FILE": "/nowhere"},
    }
    for message, extra in cases.items():
        with pytest.raises(ConfigError) as info:
            load_settings({**env, **extra})
        assert message in str(info.value), (message, str(info.value))
